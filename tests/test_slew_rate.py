"""The native slew-rate penalty (``mpc_policy.slew_rate``): the augmented LQR problem against
the dense QP with the penalty written out, the module form against the LQR form (solutions
and gradients), and the transforms' derivatives against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, AffineDynamics, QuadraticCost, lqr_solve
from mpc_policy.problem.linearize import cost_derivatives, dynamics_jacobian
from mpc_policy.slew_rate import SlewRateCost, SlewRateDynamics, augment_state, slew_rate_lqr
from tests.oracles import random_box_lqr
from tests.test_compat import _slew_oracle

F64 = torch.float64


class _NoQuadratize(nn.Module):
    """A cost without ``quadratize`` (autograd derivatives), the same values as ``inner``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.inner(x, u)


def _shared_problem():
    """Problems whose dynamics are the same at every step (so a module can express them)."""
    problem = random_box_lqr(3, 3, 2, 5, seed=8, bounded_fraction=(0.2, 0.5))
    F, f = (z[:1, :1].expand_as(z).contiguous() for z in (problem.F, problem.f))
    prev = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    return problem._replace(F=F, f=f), prev


@pytest.mark.parametrize("bounded", [True, False])
def test_slew_rate_lqr_matches_the_dense_qp(bounded: bool) -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=8, bounded_fraction=(0.2, 0.5) if bounded else None)
    prev = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    if not bounded:  # the oracle takes bounds: wide ones that no control reaches
        problem = problem._replace(
            u_lower=torch.full((3, 5, 2), -1e6, dtype=F64),
            u_upper=torch.full((3, 5, 2), 1e6, dtype=F64),
        )
    terms = slew_rate_lqr(problem.C, problem.c, problem.F, problem.f, 2.0)
    solution = lqr_solve(
        augment_state(problem.x_init, prev), *terms, problem.u_lower, problem.u_upper, tol=1e-12
    )
    expected = _slew_oracle(problem, 2.0, prev)
    torch.testing.assert_close(solution.u, expected, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(solution.x[:, 1:, :2], solution.u[:, :-1])  # z_t carries u_{t-1}
    torch.testing.assert_close(solution.x[:, 0, :2], prev)


@pytest.mark.parametrize("exact_derivatives", [True, False])
def test_modules_match_the_lqr_form_with_gradients(exact_derivatives: bool) -> None:
    problem, prev = _shared_problem()
    weight = torch.tensor(1.5, dtype=F64, requires_grad=True)
    prev = prev.clone().requires_grad_(True)
    lower, upper = problem.u_lower, problem.u_upper
    terms = slew_rate_lqr(problem.C, problem.c, problem.F, problem.f, weight)
    reference = lqr_solve(augment_state(problem.x_init, prev), *terms, lower, upper, tol=1e-12)
    cost: nn.Module = QuadraticCost(problem.C, problem.c)
    if not exact_derivatives:
        cost = _NoQuadratize(cost)
    controller = MPC(5, 2, 5, lower, upper, max_iter=100, tol=1e-12)
    solution = controller(
        augment_state(problem.x_init, prev),
        SlewRateCost(cost, weight, 2),
        SlewRateDynamics(AffineDynamics(problem.F[:, 0], problem.f[:, 0]), 2),
    )
    assert solution.info.all_converged
    torch.testing.assert_close(solution.u, reference.u, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(solution.cost, reference.cost, atol=1e-8, rtol=1e-8)
    probe = torch.randn(3, 5, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((solution.u * probe).sum(), (prev, weight))
    expected = torch.autograd.grad((reference.u * probe).sum(), (prev, weight))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-7)


def test_transforms_derivatives_match_autograd() -> None:
    g = torch.Generator().manual_seed(2)
    z, u = (
        torch.randn(2, 4, 5, generator=g, dtype=F64),
        torch.randn(2, 4, 2, generator=g, dtype=F64),
    )
    A = torch.randn(2, 4, 5, 5, generator=g, dtype=F64)
    cost = SlewRateCost(
        QuadraticCost(A @ A.transpose(-1, -2), torch.randn(2, 4, 5, generator=g, dtype=F64)), 0.7, 2
    )
    H, grad = cost.quadratize(z, u)
    H_ref, grad_ref = cost_derivatives(_NoQuadratize(cost), z.transpose(0, 1), u.transpose(0, 1))
    torch.testing.assert_close(H, H_ref.transpose(0, 1))
    torch.testing.assert_close(grad, grad_ref.transpose(0, 1))
    dynamics = SlewRateDynamics(AffineDynamics(torch.randn(3, 5, generator=g, dtype=F64)), 2)
    rows_z, rows_u = z.reshape(-1, 5), u.reshape(-1, 2)
    torch.testing.assert_close(
        dynamics.jacobian(rows_z, rows_u), dynamics_jacobian(dynamics, rows_z, rows_u)
    )
    restricted = cost.select_batch(torch.tensor([1]))
    torch.testing.assert_close(restricted(z[1:], u[1:]), cost(z, u)[1:])


def test_bad_arguments_are_named() -> None:
    x_init = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="u_prev: expected shape"):
        augment_state(x_init, torch.zeros(2, 1, dtype=F64))
    with pytest.raises(ValueError, match="n_ctrl: expected the control size"):
        augment_state(x_init, None)
    assert augment_state(x_init, None, 1).shape == (3, 3)
    with pytest.raises(ValueError, match="weight: expected a float >= 0"):
        SlewRateCost(QuadraticCost(torch.eye(3, dtype=F64)), -1.0, 1)
    with pytest.raises(TypeError, match="jacobian"):
        SlewRateDynamics(nn.Identity(), 1).jacobian(x_init, x_init[:, :1])
