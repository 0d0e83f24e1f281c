"""The peak of the tensor memory a computation creates, counted tensor by tensor on any device.

The memory plan measures what it cannot model: the activation-sized temporaries of a Hessian-vector
product grow with the probe's batch, sequence length and vocabulary, not with the parameters (a
GPT-2-shaped model at 16 × 16 tokens: 14 vectors of them during one product, measured). The OS's
RSS and CUDA's allocator statistics see every allocation of the process, and resetting CUDA's
peak would disturb a user's own; this counts only what the computation itself makes.

:class:`LiveBytes` is a dispatch mode: each storage an operator returns that did not exist before
(not an input's, not a view) is counted from the moment it is made until its memory is freed, and
the peak of that sum is kept.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes"]


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as live: ...`` then ``live.peak``: the most bytes of storage made inside
    the block that were alive at once (``live.current``: those still alive)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.current = 0
        self.peak = 0
        self._alive: set[int] = set()
        self._lock = threading.Lock()  # autograd may free on its device threads

    def _freed(self, key: int, nbytes: int) -> None:
        with self._lock:
            self._alive.discard(key)
            self.current -= nbytes

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        inputs = {_storage(t)[0] for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t._is_view():
                continue
            key, nbytes = _storage(t)
            if nbytes == 0 or key in inputs:  # in place, an alias of an input, or no memory
                continue
            storage = t.untyped_storage()
            with self._lock:
                if key in self._alive:
                    continue
                self._alive.add(key)
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            # torch keeps one Python object per live storage: this runs when its memory is freed
            weakref.finalize(storage, self._freed, key, nbytes)
        return out


def _storage(t: Tensor) -> tuple[int, int]:
    """(data pointer, bytes) of a tensor's storage; (0, 0) for one without memory of its own (a
    zero tensor autograd makes for an unused gradient, a meta or sparse tensor)."""
    if t._is_zerotensor() or t.is_meta or t.layout != torch.strided:
        return 0, 0
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # no storage torch can hand out
        return 0, 0
