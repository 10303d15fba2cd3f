"""The public local model (``mpc_policy.local_model``): the quadratic model of a cost and the
affine model of dynamics against written-out derivatives, and one box-LQR backward pass that,
rolled out on a linear problem without bounds, is the exact LQR solution."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import lqr_solve
from mpc_policy.local_model import feedback_gains, linearize, quadratize
from tests.oracles import random_box_lqr

F64 = torch.float64


class _Quartic(nn.Module):
    def __init__(self, Q: Tensor, p: Tensor) -> None:
        super().__init__()
        self.Q, self.p = Q, p

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        tau = torch.cat([x, u], dim=-1)
        return 0.5 * ((tau @ self.Q) * tau).sum(-1) + tau @ self.p + (tau**4).sum(-1)


class _Swing(nn.Module):
    """x' = x + 0.1 (sin(x) + A u), with its Jacobian written out."""

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        self.A = A

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + 0.1 * (torch.sin(x) + u @ self.A.T)

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        J_x = torch.diag_embed(1.0 + 0.1 * torch.cos(x))
        return torch.cat([J_x, 0.1 * self.A.expand(*x.shape[:-1], *self.A.shape)], dim=-1)


def test_quadratize_matches_the_written_out_model() -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    Q, p = A @ A.T, torch.randn(4, generator=g, dtype=F64)
    x, u = (
        torch.randn(2, 3, 2, generator=g, dtype=F64),
        torch.randn(2, 3, 2, generator=g, dtype=F64),
    )
    C, c, values = quadratize(_Quartic(Q, p), x, u)
    tau = torch.cat([x, u], -1)
    C_exact = Q + torch.diag_embed(12.0 * tau**2)
    torch.testing.assert_close(C, C_exact)
    gradient = tau @ Q + p + 4.0 * tau**3
    torch.testing.assert_close(c, gradient - (C_exact @ tau.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(values, _Quartic(Q, p)(x, u))


@pytest.mark.parametrize("jacobian", ["autograd", "analytic", "finite_diff"])
def test_linearize_matches_the_written_out_model(jacobian: str) -> None:
    g = torch.Generator().manual_seed(3)
    dynamics = _Swing(torch.randn(2, 3, generator=g, dtype=F64))
    x, u = (
        torch.randn(4, 5, 2, generator=g, dtype=F64),
        torch.randn(4, 5, 3, generator=g, dtype=F64),
    )
    F, f = linearize(dynamics, x, u, jacobian)
    F_exact = dynamics.jacobian(x[:, :-1], u[:, :-1])
    tol = 1e-8 if jacobian == "finite_diff" else 1e-12
    torch.testing.assert_close(F, F_exact, atol=tol, rtol=tol)
    tau = torch.cat([x[:, :-1], u[:, :-1]], -1)
    x_next = dynamics(x[:, :-1], u[:, :-1])
    torch.testing.assert_close(f, x_next - (F @ tau.unsqueeze(-1)).squeeze(-1), atol=tol, rtol=tol)


def test_feedback_gains_give_the_exact_lqr_step() -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=6, bounded_fraction=None)
    C, c, F, f = problem.C, problem.c, problem.F, problem.f
    x_bar = [problem.x_init]  # the nominal: zero controls
    u_bar = torch.zeros(3, 5, 2, dtype=F64)
    for t in range(4):
        x_bar.append(
            (F[:, t] @ torch.cat([x_bar[t], u_bar[:, t]], -1).unsqueeze(-1)).squeeze(-1) + f[:, t]
        )
    x_nominal = torch.stack(x_bar, dim=1)
    tau = torch.cat([x_nominal, u_bar], -1)
    K, k = feedback_gains(C, (C @ tau.unsqueeze(-1)).squeeze(-1) + c, F, None, None)
    xs, us, x = [], [], problem.x_init
    for t in range(5):
        u = u_bar[:, t] + k[:, t] + (K[:, t] @ (x - x_nominal[:, t]).unsqueeze(-1)).squeeze(-1)
        xs.append(x)
        us.append(u)
        if t < 4:
            x = (F[:, t] @ torch.cat([x, u], -1).unsqueeze(-1)).squeeze(-1) + f[:, t]
    exact = lqr_solve(problem.x_init, C, c, F, f)
    torch.testing.assert_close(torch.stack(us, 1), exact.u, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.stack(xs, 1), exact.x, atol=1e-10, rtol=1e-10)
