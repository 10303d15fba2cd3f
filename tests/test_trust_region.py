"""The native trust region (``mpc_policy.trust_region``): every iteration moves each control by
at most delta_u, the converged answer is the exact QP's (the oracle) and that of the plain
solve, with its gradients; unconverged elements follow ``on_unconverged``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, ConvergenceError, QuadraticCost, lqr_solve
from mpc_policy.trust_region import lqr_trust_region, mpc_trust_region
from tests.oracles import lqr_oracle_batch, random_box_lqr

F64 = torch.float64


class _Swing(nn.Module):
    """A nonlinear system x' = x + 0.1 (sin(x) + u) (rows)."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x + 0.1 * (torch.sin(x) + u)


@pytest.mark.parametrize("bounded", [True, False])
def test_lqr_trust_region_limits_each_iteration_and_reaches_the_optimum(bounded: bool) -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=3)
    lower, upper = (problem.u_lower, problem.u_upper) if bounded else (None, None)
    data = (problem.x_init, problem.C, problem.c, problem.F, problem.f, lower, upper)
    previous = torch.zeros(3, 5, 2, dtype=F64)
    for iterations in range(1, 5):
        u = lqr_trust_region(*data, 0.05, max_iter=iterations, on_unconverged="ignore").u
        assert float((u - previous).abs().max()) <= 0.05 + 1e-12
        previous = u
    solution = lqr_trust_region(*data, 0.05, max_iter=200)
    assert solution.info.all_converged
    torch.testing.assert_close(solution.u, lqr_solve(*data).u, atol=1e-8, rtol=1e-8)
    if bounded:
        _x, u_qp, cost_qp = lqr_oracle_batch(problem)
        torch.testing.assert_close(solution.u, u_qp, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(solution.cost, cost_qp, atol=1e-8, rtol=1e-8)


def test_lqr_trust_region_gradients_are_those_without_it() -> None:
    problem = random_box_lqr(2, 2, 2, 3, seed=4)
    leaves = [z.clone().requires_grad_(True) for z in (problem.x_init, problem.c, problem.F)]
    probe = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def grads(delta_u: float | None) -> tuple[Tensor, ...]:
        x_init, c, F = leaves
        data = (x_init, problem.C, c, F, problem.f, problem.u_lower, problem.u_upper)
        u = lqr_solve(*data).u if delta_u is None else lqr_trust_region(*data, delta_u).u
        return torch.autograd.grad((u * probe).sum(), leaves)

    for a, b in zip(grads(0.1), grads(None)):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_mpc_trust_region_matches_the_plain_solve() -> None:
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    cost = QuadraticCost(
        A @ A.T + torch.eye(4, dtype=F64), 3.0 * torch.randn(4, generator=g, dtype=F64)
    )
    x_init = torch.randn(2, 2, generator=g, dtype=F64).requires_grad_(True)
    previous = torch.zeros(2, 4, 2, dtype=F64)
    for iterations in (1, 2, 3):
        controller = MPC(2, 2, 4, -1.0, 1.0, max_iter=iterations, on_unconverged="ignore")
        u = mpc_trust_region(controller, x_init, cost, _Swing(), 0.1).u
        assert float((u - previous).detach().abs().max()) <= 0.1 + 1e-12
        previous = u
    controller = MPC(2, 2, 4, -1.0, 1.0, max_iter=100, tol=1e-10)
    solution = mpc_trust_region(controller, x_init, cost, _Swing(), 0.1)
    plain = controller(x_init, cost, _Swing())
    assert solution.info.all_converged
    torch.testing.assert_close(solution.u, plain.u, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(solution.u.sum(), x_init)
    (grad_plain,) = torch.autograd.grad(plain.u.sum(), x_init)
    torch.testing.assert_close(grad, grad_plain, atol=1e-6, rtol=1e-6)


def test_unconverged_elements_and_bad_arguments() -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=3)
    data = (problem.x_init, problem.C, problem.c.clone().requires_grad_(True), problem.F, problem.f)
    bounds = (problem.u_lower, problem.u_upper)
    with pytest.raises(ConvergenceError):
        lqr_trust_region(*data, *bounds, 1e-3, max_iter=1, on_unconverged="raise")
    solution = lqr_trust_region(*data, *bounds, 1e-3, max_iter=1, on_unconverged="ignore")
    assert not bool(solution.info.converged.any())
    (grad,) = torch.autograd.grad(solution.u.sum(), data[2], allow_unused=True)
    assert grad is None or not bool(grad.any())  # unconverged: their last iterate, detached
    with pytest.raises(ValueError, match="delta_u: expected a positive float"):
        lqr_trust_region(*data, *bounds, 0.0)
    constrained = MPC(3, 2, 5, constraints=nn.Identity())
    with pytest.raises(ValueError, match="without constraints"):
        mpc_trust_region(constrained, problem.x_init, QuadraticCost(problem.C), _Swing(), 0.1)
