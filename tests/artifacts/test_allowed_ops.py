"""The operator allow-list against torch's own operator registry, and the one rule that applies it.

The captures that show each family is reached from real models live in
``tests/battery/test_operator_families.py``; here every listed operator is checked against its
schema and tags, and every kind of refusal against its message.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from obstacle.artifacts import _program, allowed_ops
from obstacle.artifacts.allowed_ops import (
    ALLOWED_ATEN_OPERATORS,
    ALLOWED_OPERATORS,
    OPERATOR_FAMILIES,
    why_refused,
)
from obstacle.battery import probe

_ATEN = "torch.ops.aten."


def _overload(name: str) -> torch._ops.OpOverload:
    base, overload = name.rsplit(".", 1)
    packet = getattr(torch.ops.aten, base)
    return getattr(packet, overload)  # type: ignore[no-any-return]


@pytest.mark.parametrize("family", sorted(OPERATOR_FAMILIES))
def test_every_listed_operator_exists_and_is_functional(family: str) -> None:
    for name in OPERATOR_FAMILIES[family]:
        op = _overload(name)  # raises if torch has no such overload
        assert not op._schema.is_mutable, f"{name} mutates an argument"
        assert not name.rsplit(".", 1)[0].endswith("_"), f"{name} is an in-place form"
        seeded = torch.Tag.nondeterministic_seeded in op.tags
        assert seeded == (family == "random"), f"{name}: random={seeded} in {family}"


def test_families_do_not_overlap_and_make_up_the_list() -> None:
    sizes = sum(len(family) for family in OPERATOR_FAMILIES.values())
    assert sizes == len(ALLOWED_ATEN_OPERATORS)
    assert ALLOWED_ATEN_OPERATORS <= ALLOWED_OPERATORS


def test_the_pure_core_aten_opset_is_allowed() -> None:
    """Every `Tag.core` operator is listed unless it is refused for a stated reason."""
    refused_on_purpose = {
        "_local_scalar_dense.default",  # data-dependent scalar
        "nonzero.default",  # data-dependent shape
        "as_strided.default",  # storage surgery
        "atan2.out",  # out= form
        "_native_batch_norm_legit.default",  # updates running statistics in place
        "empty.memory_format",  # uninitialised (Probe.capture lowers it to full)
        "empty_strided.default",  # uninitialised
        "resize_.default",  # in-place storage surgery
        "sym_is_contiguous.default",  # a symbolic layout query export never emits for a probe
    }
    # dir(torch.ops.aten) lists only the packets loaded so far, which depends on the tests run
    # before this one (a torch.export.load loads sym_is_contiguous): load every aten op first.
    for qualified in torch._C._dispatch_get_all_op_names():
        namespace, _, op = qualified.partition("::")
        if namespace == "aten":
            getattr(torch.ops.aten, op.split(".")[0], None)
    core = {
        f"{name}.{overload}"
        for name in dir(torch.ops.aten)
        if isinstance(packet := getattr(torch.ops.aten, name, None), torch._ops.OpOverloadPacket)
        for overload in packet.overloads()
        if torch.Tag.core in getattr(packet, overload).tags
    }
    missing = {name for name in core if _ATEN + name not in ALLOWED_ATEN_OPERATORS}
    assert missing == refused_on_purpose & core
    for name in refused_on_purpose:
        assert why_refused(_ATEN + name)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("torch.ops.aten.add_.Tensor", "mutates a tensor in place"),
        ("torch.ops.aten.add.out", "out= tensor"),
        ("torch.ops.aten.atan2.out", "out= tensor"),
        ("torch.ops.aten.set_.source_Storage", "storage or aliasing"),
        ("torch.ops.aten.as_strided.default", "storage or aliasing"),
        ("torch.ops.aten.view.dtype", "reinterprets a tensor's bytes"),
        ("torch.ops.aten.empty.memory_format", "uninitialised memory"),
        ("torch.ops.aten.empty_permuted.default", "uninitialised memory"),
        ("torch.ops.aten.nonzero.default", "depends on the data"),
        ("torch.ops.aten._local_scalar_dense.default", "depends on the data"),
        ("torch.ops.aten.from_file.default", "touches files"),
        ("torch.ops.aten.normal.Tensor_float", "random numbers"),
        ("torch.ops.aten.rrelu_with_noise_functional.default", "random numbers"),
        ("torch.ops.aten.made_up_op.default", "pure operators of torch's core ATen opset"),
        ("torch.ops.higher_order.cond", "higher-order operator"),
        ("torch.ops.mylib.leak.default", "operator namespace 'mylib'"),
        ("torch.serialization.os.system", "not an ATen operator"),
        ("_operator.pow", "not an ATen operator"),
    ],
)
def test_each_kind_of_refusal_says_why(target: str, reason: str) -> None:
    message = why_refused(target)
    assert message is not None and reason in message and repr(target) in message


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten.lgamma.default",
        "torch.ops.aten.special_zeta.other_scalar",
        "torch.ops.aten.native_dropout.default",
        "torch.ops.aten.convolution_backward.default",
        "torch.ops.aten._fft_r2c.default",
        "torch.ops.aten.sym_size.int",
        "_operator.floordiv",
        "torch.sym_max",
    ],
)
def test_allowed_targets_are_not_refused(target: str) -> None:
    assert why_refused(target) is None


def test_the_validator_and_capture_apply_the_same_rule() -> None:
    for module in (_program, probe):
        assert "why_refused(" in inspect.getsource(module), module.__name__
    assert "ALLOWED_OPERATORS" not in inspect.getsource(_program)
    assert allowed_ops.why_refused is why_refused
