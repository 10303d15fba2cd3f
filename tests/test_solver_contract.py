"""The answers that used to be silently wrong: row-indexed dynamics, non-finite and
indefinite problems reported with their own status, and what ``"unroll"`` tends to."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, AffineDynamics, QuadraticCost, Status, lqr_solve
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

F64 = torch.float64
T = 10


class RowIndexedPendulum(PendulumDynamics):
    """The same pendulum written with ``x[:, i]`` (rows) instead of ``x[..., i]``."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        theta = torch.atan2(x[:, 1], x[:, 0])
        acceleration = (
            3.0 * self.g / (2.0 * self.l) * x[:, 1] + 3.0 / (self.m * self.l**2) * u[:, 0]
        )
        velocity = x[:, 2] + acceleration * self.dt
        theta = theta + velocity * self.dt
        return torch.stack([torch.cos(theta), torch.sin(theta), velocity], dim=1)


@pytest.mark.parametrize("jacobian", ["autograd", "finite_diff"])
def test_dynamics_indexed_by_rows_gives_the_same_plans(jacobian: str) -> None:
    x_init = start_states(5, seed=1)
    tol = 1e-10 if jacobian == "autograd" else 1e-6  # central differences: ~1e-8 accurate
    mpc = MPC(3, 1, T, -2.0, 2.0, jacobian=jacobian, tol=tol)
    reference = mpc(x_init, pendulum_cost(), PendulumDynamics())
    rows = mpc(x_init, pendulum_cost(), RowIndexedPendulum())
    assert rows.info.all_converged
    torch.testing.assert_close(rows.u, reference.u, atol=1e3 * tol, rtol=0)


def test_row_indexed_dynamics_gradients_match() -> None:
    x_init = start_states(3, seed=2)
    mpc = MPC(3, 1, T, -2.0, 2.0, tol=1e-12, max_iter=200)
    grads = []
    for dynamics in (PendulumDynamics(), RowIndexedPendulum()):
        solution = mpc(x_init, pendulum_cost(), dynamics)
        grads.append(torch.autograd.grad(solution.u.sum(), [dynamics.g, dynamics.l]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_nan_dynamics_parameter_is_reported_non_finite_not_the_initial_guess() -> None:
    dynamics = PendulumDynamics(g=float("nan"))
    mpc = MPC(3, 1, T, -2.0, 2.0, on_unconverged="ignore")
    solution = mpc(start_states(3, seed=0), pendulum_cost(), dynamics)
    assert solution.info.status_names == ["NONFINITE"] * 3
    assert not bool(solution.info.converged.any())
    assert bool(solution.u.isnan().all()) and bool(solution.cost.isnan().all())
    with pytest.warns(RuntimeWarning, match=r"non-finite.*NONFINITE at indices \[0, 1, 2\]"):
        mpc.with_options(on_unconverged="warn")(start_states(3, seed=0), pendulum_cost(), dynamics)


def test_nan_dynamics_parameter_gives_no_gradient_at_all() -> None:
    dynamics = PendulumDynamics(g=float("nan"))
    x_init = start_states(2, seed=0).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        solution = MPC(3, 1, T, -2.0, 2.0)(x_init, pendulum_cost(), dynamics)
    assert not solution.u.requires_grad


def _indefinite_lqr(B: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n, m = 2, 1
    C = torch.eye(n + m, dtype=F64).repeat(T, 1, 1)
    C[:, n:, n:] = -1.0  # the cost decreases without bound in u
    c = torch.zeros(T, n + m, dtype=F64)
    F = torch.cat([torch.eye(n, dtype=F64), torch.ones(n, m, dtype=F64)], 1).expand(T - 1, n, n + m)
    x_init = torch.ones(B, n, dtype=F64)
    return x_init, C, c, F, torch.zeros(T - 1, n, dtype=F64)


def test_indefinite_cost_is_reported_not_converged() -> None:
    x_init, C, c, F, _f = _indefinite_lqr()
    mpc = MPC(2, 1, T, on_unconverged="ignore")
    solution = mpc(x_init, QuadraticCost(C, c), AffineDynamics(F[0]))
    assert not bool(solution.info.converged.any())
    assert set(solution.info.status_names) <= {"INDEFINITE", "MAX_ITER", "STALLED"}
    assert "INDEFINITE" in solution.info.status_names
    with pytest.raises(RuntimeError, match="no minimizer"):
        mpc.with_options(on_unconverged="raise")(x_init, QuadraticCost(C, c), AffineDynamics(F[0]))


def test_indefinite_unbounded_lqr_is_reported_not_converged() -> None:
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        solution = lqr_solve(*_indefinite_lqr(), on_unconverged="ignore")
    assert solution.info.status_names == ["INDEFINITE"] * 3


def test_indefinite_cost_in_clamped_controls_is_a_minimum() -> None:
    """Negative curvature only in controls held at their bounds: a legitimate minimum. (From
    u = 0 the last control, which only enters the cost -u^2 / 2, sits at its maximum: a
    saddle, reported INDEFINITE; from u = 0.5 it goes to the bound.)"""
    x_init, C, c, F, _f = _indefinite_lqr()
    mpc = MPC(2, 1, T, -1.0, 1.0, on_unconverged="ignore")
    problem = (x_init, QuadraticCost(C, c), AffineDynamics(F[0]))
    assert mpc(*problem).info.status_names == ["INDEFINITE"] * 3
    solution = mpc(*problem, u_init=torch.full((3, T, 1), 0.5, dtype=F64))
    assert solution.info.all_converged
    assert bool((solution.u[:, -1].abs() == 1.0).all())


def test_status_of_an_unconverged_solve_is_max_iter() -> None:
    x_init = start_states(2, seed=2)
    x_init[1] = torch.tensor([math.cos(3.0), math.sin(3.0), 0.0], dtype=F64)
    solution = MPC(3, 1, 20, -2.0, 2.0, max_iter=2, on_unconverged="ignore")(
        x_init, pendulum_cost(), PendulumDynamics()
    )
    assert solution.info.status_names[1] in ("MAX_ITER", "STALLED")
    assert int(solution.info.codes[0]) == int(Status.CONVERGED) or not solution.info.converged[0]


def _bounded_pendulum_loss(grad_method: str, max_iter: int, dynamics: nn.Module) -> Tensor:
    x_init = start_states(3, seed=4)
    x_init[:, 2] = torch.tensor([2.0, -2.5, 1.5], dtype=F64)  # most controls at a bound
    mpc = MPC(
        3,
        1,
        15,
        -1.0,
        1.0,
        tol=1e-14,
        max_iter=max_iter,
        grad_method=grad_method,
        on_unconverged="ignore",
    )
    solution = mpc(x_init, pendulum_cost(), dynamics)
    w = torch.linspace(-1.0, 1.0, 15, dtype=F64).view(1, 15, 1)
    return (solution.u * w).sum() + (solution.x[..., 2:] * w).sum()


@pytest.mark.slow
def test_unroll_tends_to_the_exact_gradient_as_iterations_grow() -> None:
    """Autograd through the iterations, with the local models' dependence on the trajectory
    kept, converges to the implicit derivative of the true optimality conditions
    ("exact", checked against finite differences), not to the paper's rule."""
    dynamics = PendulumDynamics()
    params = [dynamics.g, dynamics.m, dynamics.l]
    exact = torch.autograd.grad(_bounded_pendulum_loss("exact", 200, dynamics), params)
    paper = torch.autograd.grad(_bounded_pendulum_loss("paper", 200, dynamics), params)
    h = 1e-6
    with torch.no_grad():
        dynamics.g += h
        plus = _bounded_pendulum_loss("exact", 200, dynamics)
        dynamics.g -= 2 * h
        minus = _bounded_pendulum_loss("exact", 200, dynamics)
        dynamics.g += h
    finite_difference = float((plus - minus) / (2 * h))
    assert abs(float(exact[0]) - finite_difference) < 1e-5 * (1 + abs(finite_difference))
    assert abs(float(paper[0]) - finite_difference) > 1e-4 * (1 + abs(finite_difference))
    errors = []
    for max_iter in (2, 5, 200):
        unroll = torch.autograd.grad(_bounded_pendulum_loss("unroll", max_iter, dynamics), params)
        errors.append(max(float((a - b).abs()) for a, b in zip(unroll, exact)))
    assert errors[-1] < 1e-6 * (1 + max(float(g.abs()) for g in exact))
    assert errors[-1] < errors[0]
