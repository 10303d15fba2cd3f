"""The solver's shortcuts give what the general path gives.

When every control of a box QP is at a bound of its warm start with the gradient pushing
outward, ``box_qp`` returns at once and the Riccati step skips the QP. Put next to an
element with a free control, the same element takes the general projected-Newton path;
both must agree exactly.
"""

from __future__ import annotations

import pytest
import torch

from mpc_policy.numerics.box_qp import box_qp
from mpc_policy.numerics.riccati import backward_recursion

F64 = torch.float64


def _qp_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 2-variable QPs: element 0 fully clamped at its projection, element 1 not."""
    Q = torch.tensor([[[2.0, 0.3], [0.3, 1.5]], [[2.0, 0.3], [0.3, 1.5]]], dtype=F64)
    q = torch.tensor([[5.0, 4.0], [5.0, 0.1]], dtype=F64)
    lower = torch.full((2, 2), -0.2, dtype=F64)
    upper = torch.full((2, 2), 0.2, dtype=F64)
    return Q, q, lower, upper


def test_box_qp_all_clamped_shortcut_equals_general_path() -> None:
    Q, q, lower, upper = _qp_pair()
    x_init = -torch.linalg.solve(Q, q)
    alone = box_qp(Q[:1], q[:1], lower[:1], upper[:1], x_init[:1])
    batch = box_qp(Q, q, lower, upper, x_init)
    assert not bool(alone.free.any()) and bool(batch.free[1].any())
    for got, expected in zip(alone, batch):
        torch.testing.assert_close(got[0], expected[0], atol=0.0, rtol=0.0)


@pytest.mark.parametrize("horizon", [1, 3])
def test_riccati_step_without_qp_equals_qp_path(horizon: int) -> None:
    n, m = 2, 2
    d = n + m
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(horizon, 2, d, d, generator=generator, dtype=F64)
    C = 0.1 * A @ A.transpose(-1, -2) + torch.eye(d, dtype=F64)
    C[..., n:, n:] = torch.tensor([[2.0, 0.3], [0.3, 1.5]], dtype=F64)
    C[..., n:, :n] = C[..., :n, n:] = 0.0
    g = torch.randn(horizon, 2, d, generator=generator, dtype=F64)
    g[..., n:] = torch.tensor([[5.0, 4.0], [5.0, 0.1]], dtype=F64)
    F = torch.zeros(horizon - 1, 2, n, d, dtype=F64)  # decoupled steps: every QP as above
    lower = torch.full((horizon, 2, m), -0.2, dtype=F64)
    upper = torch.full((horizon, 2, m), 0.2, dtype=F64)
    alone = backward_recursion(C[:, :1], g[:, :1], F[:, :1], lower[:, :1], upper[:, :1])
    batch = backward_recursion(C, g, F, lower, upper)
    assert not bool(alone.free.any()) and bool(batch.free[:, 1].any())
    for got, expected in zip(alone, batch):
        torch.testing.assert_close(got[:, 0], expected[:, 0], atol=0.0, rtol=0.0)
