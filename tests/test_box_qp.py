"""Box QP (projected Newton) against an exact dense oracle (scipy BVLS), its free set and
factorization, per-element stopping, unbounded and one-sided boxes, m = 1 and float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import box_qp
from tests.oracles import random_box_qp, solve_box_qp

F64 = torch.float64


def _oracle(Q: Tensor, q: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Exact x (B, m) and free mask (B, m) of every element."""
    xs, frees = [], []
    for b in range(q.shape[0]):
        arrays = (z[b].double().numpy() for z in (Q, q, lower, upper))
        solution = solve_box_qp(*arrays)
        xs.append(solution.x)
        frees.append(~(solution.at_lower | solution.at_upper))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(frees))


def _assert_in_box(x: Tensor, lower: Tensor, upper: Tensor) -> None:
    assert bool((x >= lower).all()) and bool((x <= upper).all())


@pytest.mark.parametrize("bounded", [True, False])
def test_matches_dense_oracle(bounded: bool) -> None:
    share = (0.3, 0.6) if bounded else None
    Q, q, lower, upper = random_box_qp(32, 5, seed=0, bounded_fraction=share, hard_fraction=0.3)
    result = box_qp(Q, q, lower, upper)
    x, free = _oracle(Q, q, lower, upper)
    assert bool(result.converged.all())
    _assert_in_box(result.x, lower, upper)
    torch.testing.assert_close(result.x, x, atol=1e-10, rtol=1e-10)
    assert torch.equal(result.free, free)
    if bounded:
        assert 0.3 <= float((~free).double().mean()) <= 0.6


def test_cholesky_factor_reproduces_Q_on_the_free_set() -> None:
    Q, q, lower, upper = random_box_qp(32, 6, seed=1, hard_fraction=0.3)
    result = box_qp(Q, q, lower, upper)
    L = result.chol
    assert torch.equal(L, L.tril())
    pair = result.free.unsqueeze(-1) & result.free.unsqueeze(-2)
    expected = torch.where(pair, Q, torch.eye(6, dtype=F64))
    torch.testing.assert_close(L @ L.transpose(-1, -2), expected, atol=1e-12, rtol=1e-12)
    assert bool((~result.free).any()) and bool(result.free.any())


def test_each_element_stops_on_its_own() -> None:
    Q, q, lower, upper = random_box_qp(24, 6, seed=2, hard_fraction=0.5)
    batch = box_qp(Q, q, lower, upper)
    assert len(set(batch.iterations.tolist())) > 1, "the batch should mix iteration counts"
    for b in range(24):
        alone = box_qp(Q[b : b + 1], q[b : b + 1], lower[b : b + 1], upper[b : b + 1])
        torch.testing.assert_close(batch.x[b : b + 1], alone.x, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(batch.chol[b : b + 1], alone.chol, atol=1e-12, rtol=1e-12)
        assert torch.equal(batch.free[b : b + 1], alone.free)
        assert torch.equal(batch.converged[b : b + 1], alone.converged)
        assert torch.equal(batch.iterations[b : b + 1], alone.iterations)


def test_unbounded_is_the_newton_solution() -> None:
    Q, q, lower, upper = random_box_qp(16, 4, seed=3, bounded_fraction=None, hard_fraction=0.3)
    result = box_qp(Q, q, lower, upper)
    assert bool(result.converged.all())
    assert bool(result.free.all())
    x = torch.linalg.solve(Q, -q)
    torch.testing.assert_close(result.x, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(result.chol, torch.linalg.cholesky(Q), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_one_sided_bounds(side: str) -> None:
    Q, q, lower, upper = random_box_qp(16, 5, seed=4, hard_fraction=0.3)
    if side == "lower":
        upper = torch.full_like(upper, torch.inf)
    else:
        lower = torch.full_like(lower, -torch.inf)
    result = box_qp(Q, q, lower, upper)
    x, free = _oracle(Q, q, lower, upper)
    assert bool(result.converged.all())
    _assert_in_box(result.x, lower, upper)
    torch.testing.assert_close(result.x, x, atol=1e-10, rtol=1e-10)
    assert torch.equal(result.free, free)
    assert bool((~free).any()), "some variables should sit at the finite bound"


def test_single_variable() -> None:
    Q, q, lower, upper = random_box_qp(16, 1, seed=5, bounded_fraction=(0.0, 1.0))
    result = box_qp(Q, q, lower, upper)
    x, free = _oracle(Q, q, lower, upper)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.x, x, atol=1e-12, rtol=1e-12)
    assert torch.equal(result.free, free)
    assert bool(free.any()) and bool((~free).any()), "the batch should mix free and clamped"


def test_warm_start_outside_the_box_gives_the_same_answer() -> None:
    Q, q, lower, upper = random_box_qp(16, 5, seed=6)
    start = 10.0 * torch.randn(16, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    cold = box_qp(Q, q, lower, upper)
    warm = box_qp(Q, q, lower, upper, x_init=start)
    assert bool(warm.converged.all())
    torch.testing.assert_close(warm.x, cold.x, atol=1e-10, rtol=1e-10)
    assert torch.equal(warm.free, cold.free)


def test_float32_converges_with_default_options() -> None:
    Q, q, lower, upper = random_box_qp(32, 5, seed=7, hard_fraction=0.3)
    result = box_qp(*(z.float() for z in (Q, q, lower, upper)))
    assert result.x.dtype == torch.float32
    assert bool(result.converged.all())
    _assert_in_box(result.x, lower.float(), upper.float())
    x, _ = _oracle(Q, q, lower, upper)
    # relative to each element's largest |x| (hard elements: cond(Q) = 1e4)
    scale = 1.0 + x.abs().amax(-1, keepdim=True)
    torch.testing.assert_close(result.x.double() / scale, x / scale, atol=1e-4, rtol=0)
