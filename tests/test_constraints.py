"""MPC(constraints=...): augmented-Lagrangian box-DDP and the KKT gradient.

Against independent oracles (SLSQP polished by Newton on its own active set; the exact dense
QP of a constrained LQR), against central finite differences, against the unconstrained
solver where no constraint is active, and for batch independence and infeasible reporting.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, AffineDynamics, ConvergenceError, QuadraticCost
from tests.constrained_problems import (
    AffineConstraints,
    Both,
    PowerLimit,
    VelocityLimit,
    dense_qp_oracle,
    slsqp_oracle,
)
from tests.pendulum_model import PendulumDynamics, pendulum_cost

F64 = torch.float64
T = 8
TIGHT = {"tol": 1e-12, "constraint_tol": 1e-12}


def _starts(batch: int, seed: int, dtype: torch.dtype = F64) -> Tensor:
    """Pendulum states near upright: angles in (-0.8, 0.8), velocities in (-0.3, 0.3)."""
    generator = torch.Generator().manual_seed(seed)
    theta = (torch.rand(batch, generator=generator, dtype=F64) * 2 - 1) * 0.8
    velocity = (torch.rand(batch, generator=generator, dtype=F64) * 2 - 1) * 0.3
    return torch.stack([theta.cos(), theta.sin(), velocity], dim=-1).to(dtype)


def _constraints(case: str) -> nn.Module:
    return {
        "velocity": lambda: VelocityLimit(0.5),
        "velocity_and_power": lambda: Both(VelocityLimit(0.5), PowerLimit(0.5)),
        "inactive": lambda: VelocityLimit(5.0),
    }[case]()


def _solve(x_init: Tensor, constraints: nn.Module, **options):
    mpc = MPC(3, 1, T, -2.0, 2.0, constraints=constraints, **options)
    return mpc(x_init, pendulum_cost(), PendulumDynamics(g=2.0))


@pytest.mark.parametrize("case", ["velocity", "velocity_and_power", "inactive"])
def test_solution_and_multipliers_match_slsqp(case: str) -> None:
    x_init = _starts(3, seed=0)
    constraints = _constraints(case)
    with torch.no_grad():
        solution = _solve(x_init, constraints, **TIGHT)
    report = solution.constraints
    assert report is not None
    assert solution.info.all_converged
    assert bool(report.active.any()) == (case != "inactive")
    for b in range(3):
        oracle = slsqp_oracle(
            x_init[b], pendulum_cost(), PendulumDynamics(g=2.0), constraints, T, 2.0,
            torch.zeros(T, 1, dtype=F64),
        )  # fmt: skip
        torch.testing.assert_close(solution.u[b], torch.from_numpy(oracle.u), rtol=0, atol=1e-6)
        torch.testing.assert_close(solution.x[b], torch.from_numpy(oracle.x), rtol=0, atol=1e-6)
        torch.testing.assert_close(
            report.multipliers[b], torch.from_numpy(oracle.multipliers), rtol=0, atol=1e-5
        )
    assert float(report.violation.max()) <= 1e-10


def test_inactive_constraints_give_the_unconstrained_solution_and_gradient() -> None:
    x_init = _starts(4, seed=1).requires_grad_(True)
    dynamics, cost = PendulumDynamics(g=2.0), pendulum_cost()
    loose = MPC(3, 1, T, -2.0, 2.0, constraints=VelocityLimit(5.0), **TIGHT)
    plain = MPC(3, 1, T, -2.0, 2.0, tol=1e-12)
    params = [x_init, *dynamics.parameters(), *cost.parameters()]
    grads, values = [], []
    for mpc in (loose, plain):
        solution = mpc(x_init, cost, dynamics)
        loss = solution.u.square().sum() + solution.x[..., 2].sum()
        grads.append(torch.autograd.grad(loss, params))
        values.append(solution.u.detach())
    assert loose.constraints is not None and loose.constraints.limit.grad is None
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-10)
    for constrained, unconstrained in zip(*grads):
        torch.testing.assert_close(constrained, unconstrained, rtol=1e-8, atol=1e-10)


def _finite_difference_case(case: str) -> tuple[Tensor, Tensor, nn.Module]:
    """One element, with velocity and power rows active ("constraints"), or velocity rows
    and control bounds active ("bounds")."""
    if case == "constraints":
        constraints: nn.Module = Both(VelocityLimit(0.15), PowerLimit(0.3))
        return _starts(2, seed=2)[1:], torch.tensor(1.2, dtype=F64), constraints
    return _starts(1, seed=0), torch.tensor(2.0, dtype=F64), VelocityLimit(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["constraints", "bounds"])
def test_gradients_match_central_differences(case: str) -> None:
    x_init, upper, constraints = _finite_difference_case(case)
    dynamics, cost = PendulumDynamics(g=2.0), pendulum_cost()
    x_init.requires_grad_(True)
    upper.requires_grad_(True)
    generator = torch.Generator().manual_seed(3)
    weight_x = torch.randn(1, T, 3, generator=generator, dtype=F64)
    weight_u = torch.randn(1, T, 1, generator=generator, dtype=F64)

    def run():
        mpc = MPC(3, 1, T, -upper, upper, constraints=constraints, **TIGHT)
        solution = mpc(x_init, cost, dynamics)
        return solution, (weight_x * solution.x).sum() + (weight_u * solution.u).sum()

    solution, loss = run()
    report = solution.constraints
    assert report is not None and solution.info.all_converged and bool(report.active.any())
    assert bool(report.bounds_active.any()) == (case == "bounds")
    if case == "constraints":  # rows of both modules active
        assert bool(report.active[..., :2].any()) and bool(report.active[..., 2].any())
    params = [x_init, upper, *dynamics.parameters(), *cost.parameters()]
    params += list(constraints.parameters())
    grads = torch.autograd.grad(loss, params)
    h = 1e-6
    for param, grad in zip(params, grads):
        flat = param.data.view(-1)
        finite = torch.zeros_like(flat)
        for i in range(flat.numel()):
            value = float(flat[i])
            losses = []
            for sign in (1.0, -1.0):
                flat[i] = value + sign * h
                with torch.no_grad():
                    moved, moved_loss = run()
                assert moved.constraints is not None
                assert torch.equal(moved.constraints.active, report.active)
                assert torch.equal(moved.constraints.bounds_active, report.bounds_active)
                losses.append(float(moved_loss))
            flat[i] = value
            finite[i] = (losses[0] - losses[1]) / (2 * h)
        scale = max(float(finite.abs().max()), 1.0)
        torch.testing.assert_close(grad.view(-1), finite, rtol=1e-5, atol=1e-5 * scale)
    assert any(float(g.abs().max()) > 1e-3 for g in grads[-len(list(constraints.parameters())) :])
    if case == "bounds":
        assert float(grads[1].abs()) > 1e-3


def _random_constrained_lqr(batch: int, dtype: torch.dtype):
    n, m, p = 3, 2, 2
    generator = torch.Generator().manual_seed(4)
    d = n + m
    L = torch.randn(T, d, d, generator=generator, dtype=F64)
    C = L @ L.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=F64)
    c = torch.randn(T, d, generator=generator, dtype=F64)
    F = torch.randn(n, d, generator=generator, dtype=F64) * 0.2
    F[:, :n] += torch.eye(n, dtype=F64)
    f = 0.1 * torch.randn(n, generator=generator, dtype=F64)
    D = torch.randn(p, d, generator=generator, dtype=F64)
    D[:, n:] += 2.0 * torch.eye(m, dtype=F64)  # the controls can always meet the rows
    e = -1.0 * torch.ones(p, dtype=F64)
    x_init = 0.2 * torch.randn(batch, n, generator=generator, dtype=F64)
    return x_init, C, c, F, f, D, e


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_constrained_lqr_matches_the_exact_dense_qp(dtype: torch.dtype) -> None:
    x_init, C, c, F, f, D, e = _random_constrained_lqr(4, dtype)
    mpc = MPC(3, 2, T, -1.0, 1.0, constraints=AffineConstraints(D, e).to(dtype))
    with torch.no_grad():
        solution = mpc(
            x_init.to(dtype), QuadraticCost(C.to(dtype), c.to(dtype)),
            AffineDynamics(F.to(dtype), f.to(dtype)),
        )  # fmt: skip
    report = solution.constraints
    assert report is not None and solution.info.all_converged and bool(report.active.any())
    tolerance = 1e-7 if dtype == F64 else 2e-3
    for b in range(4):
        oracle = dense_qp_oracle(
            x_init[b], C, c, F.expand(T - 1, -1, -1), f.expand(T - 1, -1), D, e, 1.0
        )
        for ours, theirs in (
            (solution.x[b], oracle.x),
            (solution.u[b], oracle.u),
            (report.multipliers[b], oracle.multipliers),
        ):
            torch.testing.assert_close(
                ours.double(), torch.from_numpy(theirs), rtol=0, atol=tolerance
            )


class PerElementLimit(nn.Module):
    """A velocity limit of its own for every batch element (B,), with ``select_batch``."""

    def __init__(self, limit: Tensor) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        limit = self.limit.view(-1, 1, 1)
        return torch.cat([x[..., 2:3] - limit, -x[..., 2:3] - limit], dim=-1)

    def select_batch(self, index: Tensor) -> PerElementLimit:
        return PerElementLimit(self.limit[index])


@pytest.mark.slow
def test_an_element_alone_equals_it_inside_a_batch_of_256() -> None:
    B = 256
    x_init = _starts(B, seed=5).requires_grad_(True)
    generator = torch.Generator().manual_seed(6)
    limit = 0.3 + 0.5 * torch.rand(B, generator=generator, dtype=F64)
    dynamics, cost = PendulumDynamics(g=2.0), pendulum_cost()
    mpc = MPC(3, 1, T, -2.0, 2.0, constraints=PerElementLimit(limit))
    batch = mpc(x_init, cost, dynamics)
    assert batch.constraints is not None and bool(batch.constraints.active.any())
    assert batch.info.all_converged
    (grad_batch,) = torch.autograd.grad(batch.u[..., 0].sum(), x_init)
    outer = batch.constraints.outer_iterations
    assert int(outer.min()) < int(outer.max())  # the elements finish at different times
    for b in (0, 17, int(outer.argmax()), B - 1):
        alone_mpc = MPC(3, 1, T, -2.0, 2.0, constraints=PerElementLimit(limit[b : b + 1]))
        x_alone = x_init[b : b + 1].detach().requires_grad_(True)
        alone = alone_mpc(x_alone, cost, dynamics)
        (grad_alone,) = torch.autograd.grad(alone.u[..., 0].sum(), x_alone)
        assert alone.constraints is not None
        torch.testing.assert_close(alone.u[0], batch.u[b], rtol=0, atol=1e-10)
        torch.testing.assert_close(alone.x[0], batch.x[b], rtol=0, atol=1e-10)
        torch.testing.assert_close(
            alone.constraints.multipliers[0], batch.constraints.multipliers[b], rtol=0, atol=1e-9
        )
        assert int(alone.constraints.outer_iterations[0]) == int(outer[b])
        torch.testing.assert_close(grad_alone[0], grad_batch[b], rtol=1e-8, atol=1e-10)


def test_infeasible_elements_are_reported_and_kept_apart() -> None:
    x_init = _starts(4, seed=7)
    x_init[2, 2] = 0.9  # x_1 = x_init breaks the velocity limit: nothing can fix it
    constraints = VelocityLimit(0.5)
    with pytest.warns(RuntimeWarning, match=r"INFEASIBLE at indices \[2\]"):
        solution = _solve(x_init, constraints)
    report = solution.constraints
    assert report is not None
    assert solution.info.status_names == ["CONVERGED", "CONVERGED", "INFEASIBLE", "CONVERGED"]
    assert report.feasible.tolist() == [True, True, False, True]
    torch.testing.assert_close(float(report.violation[2]), 0.4, rtol=0, atol=1e-6)
    assert float(report.violation[[0, 1, 3]].max()) <= 1e-8
    with pytest.raises(ConvergenceError, match=r"INFEASIBLE at indices \[2\]"):
        _solve(x_init, constraints, on_unconverged="raise")
    # the feasible elements get what they get alone, gradients included, and no NaN
    x_init.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solution = _solve(x_init, constraints, on_unconverged="zero_grad")
    solution.u.sum().backward()
    assert x_init.grad is not None and bool(torch.isfinite(x_init.grad).all())
    assert float(x_init.grad[2].abs().max()) == 0.0
    good = torch.tensor([0, 1, 3])
    x_good = x_init.detach()[good].requires_grad_(True)
    alone = _solve(x_good, constraints)
    alone.u.sum().backward()
    torch.testing.assert_close(solution.u[good], alone.u, rtol=0, atol=1e-10)
    torch.testing.assert_close(x_init.grad[good], x_good.grad, rtol=1e-8, atol=1e-10)


def test_warm_start_with_the_multipliers_needs_one_update() -> None:
    x_init = _starts(3, seed=8)
    constraints = Both(VelocityLimit(0.5), PowerLimit(0.5))
    with torch.no_grad():
        cold = _solve(x_init, constraints)
        assert cold.constraints is not None
        warm = MPC(3, 1, T, -2.0, 2.0, constraints=constraints)(
            x_init, pendulum_cost(), PendulumDynamics(g=2.0), u_init=cold.u,
            multipliers=cold.constraints.multipliers,
        )  # fmt: skip
    assert warm.constraints is not None and warm.info.all_converged
    assert int(cold.constraints.outer_iterations.min()) > 1
    assert warm.constraints.outer_iterations.tolist() == [1, 1, 1]
    torch.testing.assert_close(warm.u, cold.u, rtol=0, atol=1e-6)


def test_float32_converges_with_the_default_tolerances() -> None:
    x_init = _starts(8, seed=9, dtype=torch.float32)
    constraints = VelocityLimit(0.5).float()
    mpc = MPC(3, 1, T, -2.0, 2.0, constraints=constraints)
    solution = mpc(x_init, pendulum_cost(torch.float32), PendulumDynamics(g=2.0).float())
    assert solution.constraints is not None
    assert solution.info.all_converged and bool(solution.constraints.active.any())
    assert float(solution.constraints.violation.max()) <= 1e-4
    solution.u.sum().backward()
    assert constraints.limit.grad is not None and bool(torch.isfinite(constraints.limit.grad))


class WrongShape(nn.Module):
    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return x[..., 2]


@pytest.mark.parametrize(
    ("build", "call", "error", "match"),
    [
        (dict(constraints=WrongShape()), {}, ValueError, r"return shape \(2, 8, 'p'\)"),
        (dict(constraints=VelocityLimit(0.5)), dict(multipliers=torch.zeros(2, 8, 3, dtype=F64)),
         ValueError, r"multipliers: expected shape \(B, T, p\) = \(2, 8, 2\)"),
        (dict(constraints=VelocityLimit(0.5)), dict(multipliers=-torch.ones(2, 8, 2, dtype=F64)),
         ValueError, "multipliers: expected values >= 0"),
        (dict(constraints=VelocityLimit(0.5), grad_method="unroll"), {}, ValueError,
         'grad_method: expected "exact" with constraints'),
        ({}, dict(multipliers=torch.zeros(2, 8, 2, dtype=F64)), ValueError,
         "needs MPC\\(constraints=...\\)"),
        (dict(constraints="g <= 0"), {}, TypeError, "constraints: expected a module"),
        (dict(constraints=VelocityLimit(0.5), penalty_growth=1.0), {}, ValueError,
         "penalty_growth: expected a float > 1"),
    ],
)  # fmt: skip
def test_bad_inputs_name_the_argument(build: dict, call: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        mpc = MPC(3, 1, T, -2.0, 2.0, **build)
        mpc(_starts(2, seed=0), pendulum_cost(), PendulumDynamics(g=2.0), **call)


class SharedLookingLimit(PerElementLimit):
    """The per-element limit without ``select_batch``: the solver cannot restrict it, so
    every outer step solves the whole batch and keeps the rows still running."""

    select_batch = None  # type: ignore[assignment]


def test_a_module_that_cannot_be_restricted_gives_the_same_answer() -> None:
    B = 6
    x_init = _starts(B, seed=10)
    limit = 0.3 + 0.5 * torch.rand(B, generator=torch.Generator().manual_seed(11), dtype=F64)
    solutions = []
    for module in (PerElementLimit(limit), SharedLookingLimit(limit)):
        with torch.no_grad():
            solutions.append(_solve(x_init, module))
    restricted, whole = solutions
    assert restricted.constraints is not None and whole.constraints is not None
    outer = restricted.constraints.outer_iterations
    assert int(outer.min()) < int(outer.max()) and restricted.info.all_converged
    torch.testing.assert_close(whole.u, restricted.u, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        whole.constraints.multipliers, restricted.constraints.multipliers, rtol=0, atol=1e-9
    )
    assert torch.equal(whole.constraints.outer_iterations, outer)


class NaNBeyond(nn.Module):
    """Pendulum dynamics that return NaN once the velocity exceeds 5 (one poisoned row)."""

    def __init__(self) -> None:
        super().__init__()
        self.pendulum = PendulumDynamics(g=2.0)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        out = self.pendulum(x, u)
        return torch.where(x[..., 2:3].abs() > 5, torch.full_like(out, float("nan")), out)


def test_a_nonfinite_element_is_nan_and_out_of_the_gradient() -> None:
    x_init = _starts(4, seed=12)
    x_init[1, 2] = 9.0
    x_init.requires_grad_(True)
    dynamics = NaNBeyond()
    constraints = VelocityLimit(20.0)
    mpc = MPC(3, 1, T, -2.0, 2.0, constraints=constraints)
    with pytest.warns(RuntimeWarning, match=r"NONFINITE at indices \[1\]"):
        solution = mpc(x_init, pendulum_cost(), dynamics)
    assert solution.info.status_names[1] == "NONFINITE"
    assert bool(solution.u[1].isnan().all()) and not bool(solution.u[[0, 2, 3]].isnan().any())
    solution.u[[0, 2, 3]].sum().backward()
    params = [x_init.grad, *(p.grad for p in dynamics.parameters())]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in params)


def test_a_horizon_of_one_step() -> None:
    # one step, no dynamics: u_1 minimizes 0.001 u^2 subject to u >= e (g = D tau + e)
    x_init = _starts(2, seed=13).requires_grad_(True)
    floor = AffineConstraints(
        torch.tensor([[0.0, 0.0, 0.0, -1.0]], dtype=F64), torch.tensor([0.5], dtype=F64)
    )
    mpc = MPC(3, 1, 1, -2.0, 2.0, constraints=floor, **TIGHT)
    solution = mpc(x_init, pendulum_cost(), PendulumDynamics(g=2.0))
    report = solution.constraints
    assert report is not None and solution.info.all_converged
    torch.testing.assert_close(solution.u, torch.full((2, 1, 1), 0.5, dtype=F64))
    torch.testing.assert_close(report.multipliers, torch.full((2, 1, 1), 1e-3, dtype=F64))
    solution.u.sum().backward()
    torch.testing.assert_close(floor.e.grad, torch.tensor([2.0], dtype=F64))
    # u = (D_x x_1 + e) / (-D_u): du/dD_x = x_1, du/dD_u = u = 0.5, du/dx_1 = D_x = 0
    expected = torch.cat([x_init.detach().sum(0), torch.tensor([1.0], dtype=F64)])
    torch.testing.assert_close(floor.D.grad, expected.view(1, -1))
    torch.testing.assert_close(x_init.grad, torch.zeros_like(x_init))


def test_a_per_element_quadratic_cost_restricted_mid_solve_is_differentiated() -> None:
    """Per-element cost data (QuadraticCost with C (B, T, d, d)) restricted to the elements
    still moving inside the solve's inference mode: the restricted cost must hold ordinary
    tensors, or the augmented cost's autograd fails ("Inference tensors cannot be saved for
    backward"). Each element equals its own solve."""
    B, d = 16, 4
    weights = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=F64)
    scale = torch.linspace(0.5, 2.0, B, dtype=F64).view(B, 1, 1, 1)
    C = (scale * torch.diag(2.0 * weights)).expand(B, T, d, d).contiguous()
    c = (-2.0 * weights * torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)).expand(B, T, d)
    x_init = _starts(B, seed=4).requires_grad_()
    mpc = MPC(3, 1, T, -2.0, 2.0, constraints=VelocityLimit(0.5), max_iter=100)
    dynamics = PendulumDynamics(g=2.0)
    solution = mpc(x_init, QuadraticCost(C, c.contiguous()), dynamics)
    solution.u.sum().backward()
    assert solution.info.all_converged and torch.isfinite(x_init.grad).all()
    for b in (0, B - 1):
        alone = mpc(x_init[b : b + 1].detach(), QuadraticCost(C[b : b + 1], c[b : b + 1]), dynamics)
        torch.testing.assert_close(alone.u[0], solution.u[b].detach(), atol=1e-6, rtol=0)
