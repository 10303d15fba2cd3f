"""Nonlinear box-DDP MPC: agreement with LQR, gradients against finite differences,
agreement between gradient modes, batch independence and the non-convergence report."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, AffineDynamics, ConvergenceError, QuadraticCost, lqr_solve
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

F64 = torch.float64
T = 20


def _affine_problem(B: int, n: int, m: int, horizon: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    d = n + m
    A = torch.randn(horizon, d, d, generator=g, dtype=F64)
    C = A @ A.transpose(-1, -2) / d + 0.2 * torch.eye(d, dtype=F64)
    c = torch.randn(horizon, d, generator=g, dtype=F64)
    Fx = torch.randn(n, n, generator=g, dtype=F64)
    Fx = 0.9 * Fx / torch.linalg.matrix_norm(Fx, 2)
    F = torch.cat([Fx, torch.randn(n, m, generator=g, dtype=F64)], dim=-1)
    f = 0.1 * torch.randn(n, generator=g, dtype=F64)
    x_init = torch.randn(B, n, generator=g, dtype=F64)
    return x_init, C, c, F, f


@pytest.mark.parametrize("bounded", [False, True])
def test_affine_quadratic_mpc_equals_lqr(bounded: bool) -> None:
    B, n, m, horizon = 6, 3, 2, 8
    x_init, C, c, F, f = _affine_problem(B, n, m, horizon, seed=0)
    bound = 0.4 if bounded else None
    lower = None if bound is None else -bound
    lqr = lqr_solve(
        x_init, C, c, F.expand(horizon - 1, n, n + m), f.expand(horizon - 1, n), lower, bound
    )
    mpc = MPC(n, m, horizon, lower, bound, tol=1e-12)
    sol = mpc(x_init, QuadraticCost(C, c), AffineDynamics(F, f))
    assert sol.info.all_converged
    torch.testing.assert_close(sol.u, lqr.u, atol=1e-9, rtol=0)
    torch.testing.assert_close(sol.x, lqr.x, atol=1e-9, rtol=0)
    torch.testing.assert_close(sol.cost, lqr.cost, atol=1e-9, rtol=1e-10)


@pytest.mark.parametrize("bounded", [False, True])
def test_unroll_and_exact_agree_on_lqr(bounded: bool) -> None:
    B, n, m, horizon = 3, 3, 2, 6
    x_init, C, c, F, f = _affine_problem(B, n, m, horizon, seed=1)
    bound = 0.4 if bounded else None
    lower = None if bound is None else -bound
    weights = torch.randn(B, horizon, m, dtype=F64, generator=torch.Generator().manual_seed(5))
    grads = {}
    for method in ("exact", "paper", "unroll"):
        c_param = c.clone().requires_grad_(True)
        F_param = F.clone().requires_grad_(True)
        x0 = x_init.clone().requires_grad_(True)
        mpc = MPC(n, m, horizon, lower, bound, tol=1e-13, max_iter=100, grad_method=method)
        sol = mpc(x0, QuadraticCost(C, c_param), AffineDynamics(F_param, f))
        grads[method] = torch.autograd.grad((sol.u * weights).sum(), (c_param, F_param, x0))
    for a, b in zip(grads["exact"], grads["unroll"]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    for a, b in zip(grads["exact"], grads["paper"]):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


def _pendulum_loss(mpc: MPC, x_init: Tensor, dynamics: nn.Module, cost: nn.Module, w: Tensor):
    sol = mpc(x_init, cost, dynamics)
    return (sol.u * w).sum() + 0.1 * (sol.x[..., 2:] * w).sum(), sol


def _central_difference(fn, parameter: nn.Parameter, index: int, h: float) -> float:
    with torch.no_grad():
        flat = parameter.data.view(-1)
        original = flat[index].item()
        flat[index] = original + h
        plus = fn().item()
        flat[index] = original - h
        minus = fn().item()
        flat[index] = original
    return (plus - minus) / (2 * h)


class SmoothPenaltyCost(nn.Module):
    """A non-quadratic cost: pseudo-Huber distance to the goal plus a log-barrier-like term.

    It has no ``quadratize``: the solver differentiates it with autograd.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, 1.0, 0.3, 0.05], dtype=F64))
        self.goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        err = (torch.cat([x, u], dim=-1) - self.goal) * self.scale
        return (torch.sqrt(1.0 + err**2) - 1.0).sum(-1) + 0.05 * torch.cosh(u[..., 0] / 2)


@pytest.mark.slow
@pytest.mark.parametrize("cost_kind", ["goal_weighted", "smooth_penalty"])
def test_exact_gradients_match_finite_differences_on_pendulum(cost_kind: str) -> None:
    B = 4
    x_init = start_states(B, seed=5)
    dynamics = PendulumDynamics()
    cost = pendulum_cost() if cost_kind == "goal_weighted" else SmoothPenaltyCost()
    w = torch.randn(B, T, 1, dtype=F64, generator=torch.Generator().manual_seed(7))
    mpc = MPC(3, 1, T, -2.0, 2.0, tol=1e-13, max_iter=300)
    params = [dynamics.g, dynamics.m, dynamics.l] + [
        p for p in cost.parameters() if p.requires_grad
    ]

    with torch.no_grad():
        sol = mpc(x_init, cost, dynamics)
    assert sol.info.all_converged
    at_bound = ((sol.u.abs() - 2.0).abs() < 1e-9).float().mean().item()
    assert 0.05 < at_bound < 0.95, "the test needs some controls on a bound and some not"

    errors = {}
    fd = None
    for method in ("exact", "paper"):
        x0 = x_init.clone().requires_grad_(True)
        loss, _ = _pendulum_loss(mpc.with_options(grad_method=method), x0, dynamics, cost, w)
        grads = torch.autograd.grad(loss, [*params, x0])
        analytic = torch.cat([g.reshape(-1) for g in grads])
        if fd is None:
            x_param = nn.Parameter(x_init.clone())

            def objective(x0: Tensor = x_param) -> Tensor:
                return _pendulum_loss(mpc, x0, dynamics, cost, w)[0]

            fd = torch.tensor(
                [
                    _central_difference(objective, p, i, 1e-5)
                    for p in [*params, x_param]
                    for i in range(p.numel())
                ],
                dtype=F64,
            )
        errors[method] = ((analytic - fd).abs() / fd.abs().clamp_min(1e-3)).max().item()
    assert errors["exact"] < 1e-5, errors
    # the paper's rule drops the dynamics curvature: record how far off it is
    assert errors["paper"] > 10 * errors["exact"], errors


@pytest.mark.parametrize("method", ["autograd", "analytic", "finite_diff"])
def test_jacobian_methods_agree(method: str) -> None:
    x_init = start_states(8, seed=0)
    # central differences are accurate to ~1e-10: the fixed point cannot be tighter
    tol = 1e-8 if method == "finite_diff" else 1e-10
    mpc = MPC(3, 1, T, -2.0, 2.0, tol=tol, jacobian=method)
    reference = MPC(3, 1, T, -2.0, 2.0, tol=1e-10)(x_init, pendulum_cost(), PendulumDynamics())
    sol = mpc(x_init, pendulum_cost(), PendulumDynamics())
    assert sol.info.all_converged
    torch.testing.assert_close(sol.u, reference.u, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_batch_independence_pendulum_256() -> None:
    B = 256
    x_init = start_states(B, seed=11)
    mpc = MPC(3, 1, T, -2.0, 2.0)
    cost, dynamics = pendulum_cost(), PendulumDynamics()
    with torch.no_grad():
        batch = mpc(x_init, cost, dynamics)
        assert batch.info.all_converged
        reversed_batch = mpc(x_init.flip(0), cost, dynamics)
        torch.testing.assert_close(reversed_batch.u.flip(0), batch.u, atol=1e-12, rtol=0)
        for i in (0, 17, 128, 255):
            alone = mpc(x_init[i : i + 1], cost, dynamics)
            torch.testing.assert_close(alone.u[0], batch.u[i], atol=1e-12, rtol=0)
            assert int(alone.info.iterations[0]) == int(batch.info.iterations[i])


def test_too_few_iterations_is_reported_and_can_raise() -> None:
    x_init = start_states(4, seed=2)
    # nearly hanging down: a swing-up that needs many iterations
    x_init[2] = torch.tensor([math.cos(3.0), math.sin(3.0), 0.0], dtype=F64)
    cost, dynamics = pendulum_cost(), PendulumDynamics()
    mpc = MPC(3, 1, T, -2.0, 2.0, max_iter=2, on_unconverged="ignore")
    sol = mpc(x_init, cost, dynamics)
    assert not sol.info.converged[2]
    assert int(sol.info.iterations[2]) == 2
    assert sol.info.residual[2] > 0
    with pytest.warns(RuntimeWarning, match="did not reach a fixed point"):
        mpc.with_options(on_unconverged="warn")(x_init, cost, dynamics)
    with pytest.raises(ConvergenceError, match=r"indices \[.*2.*\]"):
        mpc.with_options(on_unconverged="raise")(x_init, cost, dynamics)


def test_zero_grad_policy_detaches_unconverged_elements_only() -> None:
    x_init = start_states(3, seed=2)
    x_init[1] = torch.tensor([math.cos(3.0), math.sin(3.0), 0.0], dtype=F64)
    x0 = x_init.clone().requires_grad_(True)
    mpc = MPC(3, 1, T, -2.0, 2.0, max_iter=3, on_unconverged="zero_grad")
    with pytest.warns(RuntimeWarning, match="gradients are zeroed"):
        sol = mpc(x0, pendulum_cost(), PendulumDynamics())
    sol.u.sum().backward()
    assert x0.grad is not None
    for i in range(3):
        if sol.info.converged[i]:
            assert x0.grad[i].abs().sum() > 0
        else:
            assert x0.grad[i].abs().sum() == 0


def test_float32_converges_with_default_options() -> None:
    x_init = start_states(32, seed=4, dtype=torch.float32)
    dynamics = PendulumDynamics().float()
    sol = MPC(3, 1, T, -2.0, 2.0)(x_init, pendulum_cost(torch.float32), dynamics)
    assert sol.u.dtype == torch.float32
    assert sol.info.all_converged
    ref = MPC(3, 1, T, -2.0, 2.0)(x_init.double(), pendulum_cost(), PendulumDynamics())
    torch.testing.assert_close(sol.u.double(), ref.u, atol=2e-3, rtol=0)


def test_warm_start_from_solution_converges_immediately() -> None:
    x_init = start_states(5, seed=6)
    mpc = MPC(3, 1, T, -2.0, 2.0)
    cost, dynamics = pendulum_cost(), PendulumDynamics()
    cold = mpc(x_init, cost, dynamics)
    warm = mpc(x_init, cost, dynamics, u_init=cold.u.detach())
    assert warm.info.all_converged
    assert int(warm.info.iterations.max()) <= 1
    torch.testing.assert_close(warm.u, cold.u, atol=1e-6, rtol=0)


def test_runs_under_no_grad_and_inference_mode() -> None:
    x_init = start_states(3, seed=8)
    mpc = MPC(3, 1, T, -2.0, 2.0)
    reference = mpc(x_init, pendulum_cost(), PendulumDynamics()).u.detach()
    with torch.no_grad():
        u_no_grad = mpc(x_init, pendulum_cost(), PendulumDynamics()).u
    with torch.inference_mode():
        u_inference = mpc(x_init, pendulum_cost(), PendulumDynamics()).u
    torch.testing.assert_close(u_no_grad, reference)
    torch.testing.assert_close(u_inference, reference)


def test_horizon_one() -> None:
    x_init = start_states(4, seed=9)
    sol = MPC(3, 1, 1, -2.0, 2.0)(x_init, pendulum_cost(), PendulumDynamics())
    assert sol.u.shape == (4, 1, 1)
    # with one step only the control cost matters: u = 0
    torch.testing.assert_close(sol.u, torch.zeros_like(sol.u))


def test_bad_inputs_name_the_argument() -> None:
    mpc = MPC(3, 1, T, -2.0, 2.0)
    cost, dynamics = pendulum_cost(), PendulumDynamics()
    with pytest.raises(ValueError, match=r"x_init: expected shape \(B, n_state\)"):
        mpc(torch.zeros(4, 2, dtype=F64), cost, dynamics)
    with pytest.raises(ValueError, match=r"u_init: expected shape"):
        mpc(start_states(2, 0), cost, dynamics, u_init=torch.zeros(2, T, 2, dtype=F64))
    with pytest.raises(ValueError, match="x_init: contains NaN"):
        mpc(torch.full((1, 3), float("nan"), dtype=F64), cost, dynamics)
    with pytest.raises(ValueError, match="u_lower must not exceed u_upper"):
        MPC(3, 1, T, 1.0, -1.0)(start_states(1, 0), cost, dynamics)
    with pytest.raises(ValueError, match="horizon: expected an integer >= 1"):
        MPC(3, 1, 0)
    with pytest.raises(TypeError, match="unknown solver option"):
        MPC(3, 1, T, lqr_iter=5)
    with pytest.raises(ValueError, match="grad_method: expected one of"):
        MPC(3, 1, T, grad_method="implicit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match=r"x_init: expected a torch\.Tensor"):
            mpc([[1.0, 0.0, 0.0]], cost, dynamics)
