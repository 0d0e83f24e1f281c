"""LiveBytes counts the storage a block makes, at its peak, exactly."""

from __future__ import annotations

import torch

from obstacle.battery.live_bytes import LiveBytes


def test_the_peak_of_what_a_block_makes_in_bytes() -> None:
    made_before = torch.ones(500, dtype=torch.float64)  # not made in the block: never counted
    with LiveBytes() as live:
        a = torch.ones(1000, dtype=torch.float64)  # 8,000 B
        b = a * 2  # 16,000 B alive
        del a  # 8,000 B
        c = b + made_before.sum()  # b, the 8-byte sum and c: 16,008 B at once
        c.add_(1)  # in place: nothing new
        d = c.view(10, 100)  # a view: nothing new
        e = made_before.detach()  # an alias of an older storage: nothing new
        del b
        assert (live.current, live.peak) == (8000, 16008)
        f = torch.empty(0)  # no bytes
        del c, d, e, f
    assert (live.current, live.peak) == (0, 16008)


def test_backward_temporaries_are_counted_and_freed() -> None:
    x = torch.randn(100, 100, dtype=torch.float64, requires_grad=True)
    with LiveBytes() as live:
        (x.tanh() * 3).sum().backward()  # type: ignore[no-untyped-call]
    vector = 100 * 100 * 8
    # The forward's tanh and product (saved or freed) and the backward's x-shaped gradients: at
    # least two x-sized tensors alive at once, at most everything the block made (< 6).
    assert 2 * vector <= live.peak <= 6 * vector, live.peak / vector
    # What is left after the block is x.grad, made in it and kept.
    assert live.current == vector


def test_tensors_without_memory_of_their_own_are_not_counted() -> None:
    # Autograd makes zero tensors (no storage) for gradients that are known to be zero; a
    # logistic regression's double backward made one, and reading its storage raised.
    with LiveBytes() as live:
        zero = torch.ops.aten._efficientzerotensor([16], dtype=torch.float64)
        meta = torch.empty(1000, device="meta")
        ones = torch.ones(10)  # 40 B, kept alive to the end
    assert zero._is_zerotensor() and meta.is_meta and ones.numel() == 10
    assert live.peak == 40
