"""Float64 reductions over float32 vectors in blocks (obstacle.battery.reduce), and Lanczos' blocked
restart combination, against float64 references, with several blocks and a partial last one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from obstacle.battery import lanczos as lanczos_module
from obstacle.battery import reduce
from obstacle.battery.reduce import dot64, gram64, norm64


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 rows × 1024 columns × 8 bytes a block: 100,003 columns take 33 blocks, the last partial.
    monkeypatch.setattr(reduce, "BLOCK_BYTES", 3 * 1024 * 8)
    monkeypatch.setattr(lanczos_module, "BLOCK_BYTES", 3 * 1024 * 8)


@pytest.mark.usefixtures("small_blocks")
def test_blocked_reductions_equal_float64_ones() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 100_003, generator=g)
    b = torch.randn(2, 100_003, generator=g)
    v = torch.randn(100_003, generator=g)
    # Tolerance: float64 sums of 1e5 products of float32 values, in a different order: 1e-10
    # relative to the sum of |products| (float32 accumulation would be ~1e-4 off).
    scale = (a.double().abs() @ b.double().abs().T).max().item()
    assert torch.allclose(gram64(a, b), a.double() @ b.double().T, rtol=0, atol=1e-10 * scale)
    assert torch.allclose(gram64(a, v), a.double() @ v.double(), rtol=0, atol=1e-10 * scale)
    assert dot64(a[0], v) == pytest.approx(float(a[0].double() @ v.double()), abs=1e-10 * scale)
    assert norm64(v) == pytest.approx(float(v.double().norm()), rel=1e-12)


@pytest.mark.usefixtures("small_blocks")
def test_restart_combines_rows_in_place_block_by_block() -> None:
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(10, 100_003, generator=g)
    s = np.random.default_rng(2).standard_normal((9, 5))
    expected = (torch.as_tensor(s.T) @ rows[:9].double()).float()
    untouched = rows[5:].clone()
    lanczos_module._combine_rows(rows, s, 9)
    assert torch.allclose(rows[:5], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(rows[5:], untouched)
