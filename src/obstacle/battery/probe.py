"""The probe: a run's model and loss as one `torch.export` program, plus fixed probe data.

The battery evaluates the loss without the client's Python code: ``Probe.capture`` traces
``loss_fn(model(*inputs), target)`` into a program ``(*batch_tensors) -> scalar loss`` with a
dynamic batch dimension, lowered to core ATen (so the safety validator can check every operator,
and so attention runs through the math kernel, which has a double backward).
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import obstacle
from obstacle.artifacts.allowed_ops import why_refused
from obstacle.artifacts.archive import validate_program_archive
from obstacle.artifacts.bundle import probe_content_hash
from obstacle.artifacts.layout import PROBE_DATA, PROBE_DIR, PROBE_MANIFEST, PROBE_PROGRAM
from obstacle.artifacts.manifest import InputSpec, ProbeManifest, TensorSpec, read_manifest
from obstacle.errors import ProbeError

Batch = tuple[torch.Tensor, ...]
LossFn = Callable[[Any, torch.Tensor], torch.Tensor]

# The wrapper module keeps the client's model under this attribute; names in checkpoints do not
# carry the prefix.
_MODEL_PREFIX = "model."


class _ModelWithLoss(nn.Module):
    """``(*inputs, target) -> loss_fn(model(*inputs), target)`` as one module to export."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(*batch[:-1]), batch[-1])


@dataclass
class Probe:
    """A captured probe: the exported loss program, the probe batches and the manifest."""

    program: torch.export.ExportedProgram
    batches: list[Batch]
    validation: Batch | None
    manifest: ProbeManifest

    @classmethod
    def capture(
        cls,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Sequence[torch.Tensor]],
        validation: Sequence[torch.Tensor] | None = None,
    ) -> Probe:
        """Capture ``loss_fn(model(*batch[:-1]), batch[-1])`` as an exported program.

        ``batches`` are K minibatches from the training set, each a tuple ``(*inputs, target)``
        of tensors sharing their first (batch) dimension; all K must have the same batch size.
        ``validation`` is one optional batch of the same structure. The model is traced in eval
        mode (dropout off, batch-norm running statistics) and restored to its mode afterwards.
        An operator the service would refuse (``obstacle.artifacts.allowed_ops``) is refused
        here, with a ``ProbeError`` naming it, why, and the layer that called it.
        """
        probe_batches = _check_batches(batches)
        val = (
            _check_batch(validation, "validation", probe_batches[0])
            if validation is not None
            else None
        )
        if isinstance(loss_fn, nn.Module) and any(p.requires_grad for p in loss_fn.parameters()):
            raise ProbeError(
                f"loss_fn {type(loss_fn).__name__} has trainable parameters; the probe's checkpoints "
                "hold only the model's state. Move those parameters into the model."
            )
        program = _export(model, loss_fn, probe_batches[0])
        manifest = _manifest(model, loss_fn, program, probe_batches, val, content_hash="")
        return cls(program=program, batches=probe_batches, validation=val, manifest=manifest)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``RUN_DIR/probe/{manifest.json, program.pt2, data.safetensors}`` atomically.

        The program archive passes the service's validator first (``UnsafeArchiveError``
        otherwise), so what is saved is what the service and ``obstacle analyze`` accept.
        """
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        final = run / PROBE_DIR
        staging = Path(tempfile.mkdtemp(prefix=".probe-", dir=run))
        try:
            program_path = staging / PROBE_PROGRAM
            # Sample inputs would be pickled into the archive; the validator rejects any pickle.
            self.program._example_inputs = None
            torch.export.save(self.program, program_path)
            # The service's whole validator, so a probe it would refuse is never saved.
            validate_program_archive(program_path)
            save_file(_data_tensors(self.batches, self.validation), str(staging / PROBE_DATA))
            digest = content_hash(staging)
            self.manifest = self.manifest.model_copy(update={"content_hash": digest})
            (staging / PROBE_MANIFEST).write_text(
                json.dumps(self.manifest.model_dump(), indent=2), encoding="utf-8"
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return final

    @classmethod
    def load(cls, run_dir: str | Path) -> Probe:
        """Load a saved probe; the program archive is validated before torch reads it."""
        from obstacle.battery._safe_load import load_program_safely

        directory = Path(run_dir) / PROBE_DIR
        manifest = read_manifest(directory / PROBE_MANIFEST)
        digest = content_hash(directory)
        if digest != manifest.content_hash:
            raise ProbeError(
                f"{directory}: the probe files' content hash is {digest[:16]}… but the manifest says "
                f"{manifest.content_hash[:16]}…; a file was changed after capture. Capture the probe again."
            )
        program = load_program_safely(directory / PROBE_PROGRAM)
        try:
            tensors = load_file(str(directory / PROBE_DATA))
        except Exception as exc:  # safetensors raises its own error types
            raise ProbeError(
                f"{directory / PROBE_DATA}: cannot read the probe data as safetensors ({exc}). "
                "Capture the probe again."
            ) from None
        batches, validation = _split_data(tensors, manifest, directory)
        return cls(program=program, batches=batches, validation=validation, manifest=manifest)


def content_hash(probe_dir: Path) -> str:
    """SHA-256 over the program archive and the probe data (the service computes the same)."""
    for name in (PROBE_PROGRAM, PROBE_DATA):
        path = probe_dir / name
        if not path.exists():
            raise ProbeError(
                f"{path}: missing probe file. Capture the probe again with Probe.capture(...).save()."
            )
    return probe_content_hash(probe_dir)


def _check_batches(batches: Sequence[Sequence[torch.Tensor]]) -> list[Batch]:
    if isinstance(batches, torch.Tensor) or len(batches) == 0:
        raise ProbeError(
            "The 'batches' argument must be a non-empty list of minibatches, each a tuple "
            "(*inputs, target) of tensors. Got "
            f"{type(batches).__name__}{'' if isinstance(batches, torch.Tensor) else ' of length 0'}."
        )
    first = _check_batch(batches[0], "batches[0]", None)
    checked = [first]
    for k, batch in enumerate(batches[1:], start=1):
        checked.append(_check_batch(batch, f"batches[{k}]", first))
    return checked


def _check_batch(batch: Sequence[torch.Tensor], name: str, like: Batch | None) -> Batch:
    if isinstance(batch, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in batch):
        raise ProbeError(
            f"{name} must be a tuple (*inputs, target) of tensors; got {type(batch).__name__}."
        )
    tensors = tuple(t.detach().cpu().contiguous() for t in batch)
    if len(tensors) < 2:
        raise ProbeError(
            f"{name} must hold at least (input, target); got {len(tensors)} tensor(s)."
        )
    sizes = {t.shape[0] if t.dim() else None for t in tensors}
    if len(sizes) != 1 or None in sizes:
        raise ProbeError(
            f"{name}: every tensor must share its first (batch) dimension; got shapes "
            f"{[tuple(t.shape) for t in tensors]}."
        )
    size = int(tensors[0].shape[0])
    if size < 2:
        raise ProbeError(
            f"{name}: the batch size must be at least 2 to trace a dynamic batch dimension; got {size}."
        )
    if like is not None:
        if len(tensors) != len(like) or any(
            t.shape[1:] != u.shape[1:] or t.dtype != u.dtype
            for t, u in zip(tensors, like, strict=True)
        ):
            raise ProbeError(
                f"{name} does not match batches[0]: shapes {[tuple(t.shape) for t in tensors]} vs "
                f"{[tuple(u.shape) for u in like]}. Every probe batch must have the same structure."
            )
        if name.startswith("batches") and size != like[0].shape[0]:
            raise ProbeError(
                f"{name} has batch size {size} but batches[0] has {like[0].shape[0]}; probe batches "
                "must be equally sized (drop the last, smaller batch)."
            )
    return tensors


@contextlib.contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Record which submodule is executing, so an export failure can name the layer."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        label = f"{name or '<root>'} ({type(module).__name__})"

        def pre(_m: nn.Module, _a: Any, label: str = label) -> None:
            stack.append(label)

        def post(_m: nn.Module, _a: Any, _o: Any, label: str = label) -> None:
            if stack and stack[-1] == label:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _export(model: nn.Module, loss_fn: LossFn, batch: Batch) -> torch.export.ExportedProgram:
    wrapper = _ModelWithLoss(model, loss_fn)
    was_training = model.training
    model.eval()
    dim = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: dim} for _ in batch)
    try:
        with _module_stack(model) as stack, _math_attention(), warnings.catch_warnings():
            # torch.export's own pytree code trips its deprecation of LeafSpec; not the user's.
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
            )
            # nn.LSTM/GRU re-assign their flat weight list while tracing; the export still works.
            warnings.filterwarnings(
                "ignore", message=r".*_flat_weights.*assigned during export", category=UserWarning
            )
            try:
                program = torch.export.export(
                    wrapper, batch, dynamic_shapes=(dynamic,), strict=False
                )
            except Exception as exc:
                layer = stack[-1] if stack else f"<root> ({type(model).__name__})"
                raise ProbeError(
                    f"torch.export could not capture the model at layer {layer}: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                    "Rewrite that layer without data-dependent Python control flow, in-place "
                    "mutation of inputs or non-tensor outputs, or see "
                    "https://pytorch.org/docs/stable/export.html for what export supports."
                ) from exc
            program = program.run_decompositions(_decompositions())
    finally:
        model.train(was_training)
    _check_operators(program)
    loss = program.module()(*batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ProbeError(
            f"loss_fn must return a scalar tensor (use reduction='mean'); it returned {shape}."
        )
    exported: torch.export.ExportedProgram = program
    return exported


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """Trace attention through the math kernel: the fused CPU kernels have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _decompositions() -> dict[Any, Callable[..., Any]]:
    """Core-ATen decompositions, plus the ops whose derivatives torch.func gets wrong."""
    from torch._decomp import get_decompositions

    table: dict[Any, Callable[..., Any]] = dict(torch.export.default_decompositions())
    aten = torch.ops.aten
    # native_layer_norm's backward formula is not twice-differentiable under
    # forward-mode; decomposed into elementary ops they are exact for every transform.
    table.update(
        get_decompositions(
            [
                aten.native_layer_norm,
                aten._scaled_dot_product_flash_attention_for_cpu,
            ]
        )
    )
    # Uninitialised allocations are refused by the allow-list (stale memory); torch itself uses
    # them where every element is written afterwards (circular padding, empty_like in
    # HingeEmbeddingLoss), so they are lowered to zero-filled tensors with the same values.
    table.update(
        {
            aten.empty.memory_format: _zeros_for_empty,
            aten.empty_permuted.default: _zeros_for_empty,
            aten.empty_strided.default: _zeros_for_empty,
            aten.new_empty.default: _new_zeros_for_empty,
            aten.new_empty_strided.default: _new_zeros_for_empty,
        }
    )
    return table


def _zeros_for_empty(
    size: Sequence[Any],
    *_layout: Any,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
    device: torch.device | None = None,
    pin_memory: bool | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """``empty``/``empty_permuted``/``empty_strided`` as a zero-filled ``full`` (same values)."""
    zeros: torch.Tensor = torch.ops.aten.full.default(
        size, 0, dtype=dtype, layout=layout, device=device, pin_memory=pin_memory
    )
    return zeros


def _new_zeros_for_empty(
    self: torch.Tensor,
    size: Sequence[Any],
    *_stride: Any,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
    device: torch.device | None = None,
    pin_memory: bool | None = None,
) -> torch.Tensor:
    """``new_empty``/``new_empty_strided`` as a zero-filled ``full`` in ``self``'s dtype/device."""
    zeros: torch.Tensor = torch.ops.aten.full.default(
        size,
        0,
        dtype=dtype or self.dtype,
        layout=layout,
        device=device or self.device,
        pin_memory=pin_memory,
    )
    return zeros


def _check_operators(program: torch.export.ExportedProgram) -> None:
    """Refuse at capture what the service would refuse at upload: the same rule, ``why_refused``."""
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue  # torch.export.save writes getitem into its producer, not as a node
        refusal = why_refused(_serialized_target(node.target))
        if refusal is not None:
            wrapped = [a for a in node.args if isinstance(a, torch._ops.OpOverload)]
            if wrapped:  # with_effects and its kin wrap the operator that has the effect
                refusal += f" (here it wraps {_serialized_target(wrapped[0])})"
            raise ProbeError(
                f"Probe.capture: the program {refusal}. It comes from {_node_origin(node)}. "
                "The service and `obstacle analyze` refuse such a probe; rewrite that part of "
                "the model or loss with the operators listed in obstacle.artifacts.allowed_ops "
                "(torch.zeros instead of torch.empty, a fixed-size mask instead of "
                "data-dependent indexing, no custom operators), or, if the operator is pure, "
                "ask for it to be added to the allow-list."
            )


def _serialized_target(target: Any) -> str:
    """A node target named as ``torch.export.save`` writes it (``serialize_operator`` in torch)."""
    if isinstance(target, str):
        return target
    module = str(target.__module__).replace("torch._ops", "torch.ops")
    return f"{module}.{target.__name__}"


def _node_origin(node: torch.fx.Node) -> str:
    """The layer and source line a graph node was traced from, as far as export recorded them."""
    stack = node.meta.get("nn_module_stack") or {}
    layer = "the loss function"
    if stack:
        path, kind = list(stack.values())[-1]
        name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1])
        if path == _MODEL_PREFIX.rstrip("."):
            layer = f"the model's own forward ({name})"
        elif path:
            layer = f"layer {_strip(path)} ({name})"
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    return f"{layer}, `{trace[-1].strip()}`" if trace else layer


def _manifest(
    model: nn.Module,
    loss_fn: LossFn,
    program: torch.export.ExportedProgram,
    batches: list[Batch],
    validation: Batch | None,
    *,
    content_hash: str,
) -> ProbeManifest:
    state = program.state_dict
    sig = program.graph_signature
    # Only the model's own tensors travel in checkpoints; a loss module's buffers (class
    # weights, say) stay fixed inside the program.
    params = [_spec(_strip(n), state[n]) for n in sig.parameters if n.startswith(_MODEL_PREFIX)]
    # Non-persistent buffers (e.g. BERT's position_ids) are not in a state_dict, so checkpoints
    # cannot carry them: they stay fixed inside the program, like a loss module's buffers.
    transient = set(sig.non_persistent_buffers)
    buffers = [
        _spec(_strip(n), _buffer(program, n))
        for n in sig.buffers
        if n.startswith(_MODEL_PREFIX) and n not in transient
    ]
    first = batches[0]
    inputs = [
        InputSpec(index=i, shape=[-1, *t.shape[1:]], dtype=_dtype_name(t.dtype))
        for i, t in enumerate(first)
    ]
    return ProbeManifest(
        parameters=params,
        buffers=buffers,
        inputs=inputs,
        num_batches=len(batches),
        batch_size=int(first[0].shape[0]),
        validation_size=int(validation[0].shape[0]) if validation is not None else None,
        torch_version=torch.__version__,
        obstacle_version=obstacle.__version__,
        content_hash=content_hash,
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        loss_class=getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__),
    )


def _buffer(program: torch.export.ExportedProgram, name: str) -> torch.Tensor:
    found = program.state_dict.get(name)
    if found is None:
        found = program.constants[name]  # non-persistent buffers
    assert isinstance(found, torch.Tensor)
    return found


def _strip(name: str) -> str:
    return name[len(_MODEL_PREFIX) :] if name.startswith(_MODEL_PREFIX) else name


def _spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name=name, shape=list(tensor.shape), dtype=_dtype_name(tensor.dtype))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _data_tensors(batches: list[Batch], validation: Batch | None) -> dict[str, torch.Tensor]:
    # Each tensor gets its own storage: safetensors refuses tensors that share memory (a batch
    # whose input and target are views of one tensor, say).
    data = {
        f"batch_{k}.{i}": t.contiguous().clone()
        for k, b in enumerate(batches)
        for i, t in enumerate(b)
    }
    if validation is not None:
        data.update({f"validation.{i}": t.contiguous().clone() for i, t in enumerate(validation)})
    return data


def _split_data(
    tensors: dict[str, torch.Tensor], manifest: ProbeManifest, where: Path
) -> tuple[list[Batch], Batch | None]:
    n_inputs = len(manifest.inputs)
    expected = {f"batch_{k}.{i}" for k in range(manifest.num_batches) for i in range(n_inputs)}
    if manifest.validation_size is not None:
        expected |= {f"validation.{i}" for i in range(n_inputs)}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))
        extra = sorted(set(tensors) - expected)
        raise ProbeError(
            f"{where / PROBE_DATA}: the probe data does not match the manifest "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}). Capture the probe again."
        )
    batches = [
        tuple(tensors[f"batch_{k}.{i}"] for i in range(n_inputs))
        for k in range(manifest.num_batches)
    ]
    validation = (
        tuple(tensors[f"validation.{i}"] for i in range(n_inputs))
        if manifest.validation_size is not None
        else None
    )
    return batches, validation
