"""Newton steps near a solution (``newton_residual``): the same fixed point and gradient as
Gauss-Newton (iLQR), in fewer steps where iLQR converges slowly; a refused Newton step falls
back to Gauss-Newton; off where the model's curvature is not to be used."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mpc_policy import MPC, GoalWeightedCost, MPCOptions, Status
from mpc_policy.envs.pendulum import PendulumDynamics
from mpc_policy.problem.module_model import ModuleModel

F64 = torch.float64
T = 20


def _slow_problem(batch: int) -> tuple[Tensor, PendulumDynamics, GoalWeightedCost]:
    """Pendulum swing-ups whose torque weight is 10^4 too large (PPO's wrong start): iLQR
    converges at about 0.5 per step here, so the slowest elements take 20 steps."""
    generator = torch.Generator().manual_seed(0)
    theta = (torch.rand(batch, generator=generator, dtype=F64) * 2 - 1) * math.pi
    velocity = torch.rand(batch, generator=generator, dtype=F64) * 2 - 1
    x_init = torch.stack([theta.cos(), theta.sin(), velocity], dim=-1)
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 10.0], dtype=F64),
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64),
    )
    return x_init, PendulumDynamics(dtype=F64), cost


def _solve(newton_residual: float, batch: int = 64, **options: object):
    x_init, dynamics, cost = _slow_problem(batch)
    x_init.requires_grad_(True)
    mpc = MPC(3, 1, T, -2.0, 2.0, newton_residual=newton_residual, **options)
    solution = mpc(x_init, cost, dynamics)
    loss = (solution.u[:, 0] ** 2).sum() + solution.x[:, -1].sum()
    grads = torch.autograd.grad(loss, [x_init, cost.raw_weights, dynamics.gravity])
    return solution, grads


def test_newton_reaches_the_gauss_newton_fixed_point_in_fewer_steps() -> None:
    gauss_newton, gn_grads = _solve(0.0)
    newton, newton_grads = _solve(MPCOptions().newton_residual)
    for solution in (gauss_newton, newton):
        assert bool((solution.info.status == Status.CONVERGED).all())
    # the same fixed point (both within tol = 1e-7 of it) and the same implicit gradient
    torch.testing.assert_close(newton.u, gauss_newton.u, atol=1e-6, rtol=0)
    torch.testing.assert_close(newton.cost, gauss_newton.cost, atol=1e-9, rtol=1e-9)
    for ours, theirs in zip(newton_grads, gn_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # iLQR's linear convergence against Newton's quadratic one on the slow elements
    assert int(gauss_newton.info.iterations.max()) >= 15
    assert int(newton.info.iterations.max()) <= 8
    assert float(newton.info.iterations.double().mean()) < float(
        gauss_newton.info.iterations.double().mean()
    )


def test_a_refused_newton_step_falls_back_to_gauss_newton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A curvature that makes every Newton step useless (a strongly negative Hessian, then
    regularized): no step size is accepted, so each element retries as Gauss-Newton and
    ends at the Gauss-Newton solution, converged, not stalled."""

    def misleading(self: ModuleModel, x: Tensor, u: Tensor, lam: Tensor) -> Tensor:
        d = x.shape[-1] + u.shape[-1]
        eye = torch.eye(d, dtype=x.dtype)
        return (-1e3 * eye).expand(x.shape[0] - 1, x.shape[1], d, d)

    gauss_newton, _ = _solve(0.0, batch=8)
    monkeypatch.setattr(ModuleModel, "curvature", misleading)
    fallen_back, _ = _solve(0.5, batch=8)
    assert bool((fallen_back.info.status == Status.CONVERGED).all())
    torch.testing.assert_close(fallen_back.u, gauss_newton.u, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "options", [{"jacobian": "finite_diff"}, {"grad_method": "unroll"}], ids=["fd", "unroll"]
)
def test_newton_steps_are_off_where_the_curvature_is_not_used(
    options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = ModuleModel.curvature

    def counted(self: ModuleModel, x: Tensor, u: Tensor, lam: Tensor) -> Tensor | None:
        out = original(self, x, u, lam)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(ModuleModel, "curvature", counted)
    with_newton, _ = _solve(0.5, batch=4, **options)
    without, _ = _solve(0.0, batch=4, **options)
    assert not any(calls)
    assert torch.equal(with_newton.info.iterations, without.info.iterations)


def test_newton_residual_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="newton_residual: expected a float >= 0, received -1"):
        MPCOptions(newton_residual=-1.0)
    with pytest.raises(TypeError, match="newton_residual: expected a float"):
        MPCOptions(newton_residual="0.1")  # type: ignore[arg-type]
