"""The probe's graph made to compute in the analysis dtype, and dtype failures made into errors.

Casting the parameters, buffers, lifted constants and probe data (``LossEngine.create``) is not
enough: a tensor the graph creates keeps the dtype that was written into it at capture. ``nn.GRU``
and ``nn.LSTM`` start from ``aten.full([1, batch, hidden], 0, dtype=torch.float32)``, so a
float64 analysis of a float32-trained model ended in ``mat1 and mat2 must have the same dtype``.
``cast_graph`` therefore rewrites every ``ScalarType`` argument that names a floating dtype
(``dtype=`` of ``full``/``scalar_tensor``/``arange``/``_to_copy``, ``sum(dtype=)``,
``mm.dtype``'s ``out_dtype``, ``_assert_tensor_metadata``'s check) to the analysis dtype, and
gives factories that left ``dtype`` to torch's default an explicit one when they created a
floating tensor. Integer and bool dtypes are kept: they are indices, masks and counts. Device
arguments (``full(device=cpu)``) follow the engine's device the same way.

If an operator still meets mixed dtypes, ``run_graph`` finds the node and raises a ``ProbeError``
that names it, its inputs' dtypes and the fix, instead of torch's traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from obstacle.errors import ProbeError

__all__ = ["cast_graph", "run_graph"]


def cast_graph(
    graph: torch.fx.GraphModule, dtype: torch.dtype, device: torch.device | None = None
) -> torch.fx.GraphModule:
    """A copy of ``graph`` whose floating dtype arguments are ``dtype`` (``graph`` is unchanged).

    With ``device``, every device argument (``full(device=cpu)``, ``_to_copy(device=...)``) is
    ``device`` as well: a CUDA analysis of a probe captured on the CPU.
    """
    copy = torch.fx.Graph()
    copy._codegen = graph.graph._codegen
    values: dict[torch.fx.Node, torch.fx.Node] = {}
    output = copy.graph_copy(graph.graph, values)
    copy.output(output)
    for node in copy.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            _cast_node(node, dtype, device)
    module = torch.fx.GraphModule(graph, copy)
    for node in copy.nodes:
        if node.op == "get_attr":  # exported programs lift their tensors; kept for completeness
            value = getattr(module, str(node.target), None)
            if isinstance(value, Tensor) and value.is_floating_point():
                setattr(module, str(node.target), value.to(dtype))
    return module


def _cast_node(node: torch.fx.Node, dtype: torch.dtype, device: torch.device | None) -> None:
    schema = node.target._schema  # type: ignore[union-attr]
    args = list(node.args)
    kwargs = dict(node.kwargs)
    for index, argument in enumerate(schema.arguments):
        # A ScalarType argument (`dtype`, `out_dtype`) arrives as a torch.dtype; the schema's JIT
        # type only says `int`.
        positional = index < len(args) and not argument.kwarg_only
        value = args[index] if positional else kwargs.get(argument.name)
        new: Any = value
        if isinstance(value, torch.dtype) and value.is_floating_point:
            new = dtype  # integer and bool dtypes stay: indices, masks, counts
        elif value is None and argument.name == "dtype" and _creates_floating(node):
            new = dtype  # `dtype=None` on a non-factory follows its input, which already follows
        elif isinstance(value, torch.device) and device is not None:
            new = device
        if new is value:
            continue
        if positional:
            args[index] = new
        else:
            kwargs[argument.name] = new
    node.args = tuple(args)
    node.kwargs = kwargs


def _creates_floating(node: torch.fx.Node) -> bool:
    """A pure factory (no tensor arguments) whose recorded output is floating."""
    schema = node.target._schema  # type: ignore[union-attr]
    if any("Tensor" in str(argument.type) for argument in schema.arguments):
        return False  # `dtype=None` there means "like the input", which already follows
    value = node.meta.get("val")
    return isinstance(value, Tensor) and value.is_floating_point()


def run_graph(graph: torch.fx.GraphModule, args: Sequence[Any], *, probe: str) -> Any:
    """``graph(*args)``; a dtype mismatch inside it becomes a ``ProbeError`` naming the node."""
    try:
        return graph(*args)
    except RuntimeError as exc:
        failure = _dtype_failure(graph, args)
        if failure is None:
            raise
        raise ProbeError(
            f"The probe of {probe} cannot run in the analysis dtype: {failure} "
            f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}). "
            "Analyse it with --dtype float32 (dtype='float32'), or re-capture the probe "
            "with the model in the dtype you analyse in."
        ) from exc


def _dtype_failure(graph: torch.fx.GraphModule, args: Sequence[Any]) -> str | None:
    """Re-run ``graph`` node by node: the failing node, if its tensor inputs mix float dtypes."""
    failed: list[str] = []

    class _Locate(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            try:
                return super().run_node(n)
            except Exception:
                inputs = [
                    a
                    for a in pytree.tree_leaves(self.fetch_args_kwargs_from_env(n))
                    if isinstance(a, Tensor)
                ]
                floating = sorted({str(t.dtype) for t in inputs if t.is_floating_point()})
                if len(floating) > 1:
                    failed.append(
                        f"the operator {n.target} (node {n.name!r}) receives tensors of "
                        f"{' and '.join(floating)}"
                    )
                raise

    # The re-run fails again by design; only the node it recorded matters.
    with torch.no_grad(), contextlib.suppress(Exception):
        _Locate(graph).run(*[a.detach() if isinstance(a, Tensor) else a for a in args])
    return failed[0] if failed else None
