"""The compiled box-DDP path (``mpc_policy.solve.compiled_path``) against the torch path.

The torch path is the reference: the same module as a subclass without a compiled twin runs
``solve.ddp.box_ddp`` with the same options. Solutions agree within the solver tolerance, statuses
and iteration counts are identical, and, the backward being shared, float64 gradients agree
to 1e-10 relative. Also: the twins' Jacobian and curvature against autograd, non-finite rows,
per-element parameters, parameters read at every solve, and the fallback with its reason.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mpc_policy import MPC, GoalWeightedCost, QuadraticCost
from mpc_policy.envs import (
    CartPoleDynamics,
    PendulumDynamics,
    WindyPendulumDynamics,
    cartpole_cost,
    pendulum_cost,
)
from mpc_policy.problem.linearize import dynamics_curvature
from mpc_policy.solve.backend import ENVIRONMENT_VARIABLE, compiled_available
from tests.compiled_models import model_calls

pytestmark = pytest.mark.skipif(not compiled_available(), reason="needs numba")


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the compiled path: the default backend, whatever the
    environment asks of the rest of the suite (``MPC_POLICY_BACKEND=torch``)."""
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


T = 20
SYSTEMS = {"pendulum": PendulumDynamics, "windy": WindyPendulumDynamics}
ALL_SYSTEMS = {**SYSTEMS, "cartpole": CartPoleDynamics}


def _twinless(dynamics: nn.Module) -> nn.Module:
    """The same dynamics as a subclass without a compiled twin (the torch path)."""
    plain_type = type("NoTwin" + type(dynamics).__name__, (type(dynamics),), {})
    plain = plain_type(dynamics.params, dtype=dynamics.gravity.dtype)  # type: ignore[call-arg]
    plain.load_state_dict(dynamics.state_dict())
    return plain


def _states(batch: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * 2.0 * math.pi
    speed = 2.0 * torch.rand(batch, generator=gen, dtype=torch.float64) - 1.0
    return torch.stack([theta.cos(), theta.sin(), speed], -1).to(dtype)


def _cost(kind: str, dtype: torch.dtype, batch: int) -> nn.Module:
    if kind == "goal":
        # a heavy torque weight: Newton steps switch on (Gauss-Newton contracts slowly)
        weights = torch.tensor([1.0, 1.0, 0.1, 0.1], dtype=dtype)
        goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)
        return GoalWeightedCost(weights, goal)
    weights = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype)
    C = torch.diag(2.0 * weights).expand(batch, T, 4, 4).clone()
    c = (-2.0 * weights * torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)).expand(batch, T, 4)
    return QuadraticCost(C, c.clone())


def _solve(mpc: MPC, x_init: torch.Tensor, cost: nn.Module, dynamics: nn.Module):
    x_init = x_init.clone().requires_grad_(True)
    solution = mpc(x_init, cost, dynamics)
    gen = torch.Generator().manual_seed(1)
    wx = torch.randn(solution.x.shape, generator=gen, dtype=torch.float64).to(x_init.dtype)
    wu = torch.randn(solution.u.shape, generator=gen, dtype=torch.float64).to(x_init.dtype)
    finite = ~solution.info.nonfinite
    loss = (solution.x[finite] * wx[finite]).sum() + (solution.u[finite] * wu[finite]).sum()
    leaves = [x_init, *(p for p in cost.parameters() if p.requires_grad)]
    leaves += list(dynamics.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return solution, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("batch", [1, 6])
def test_compiled_path_equals_torch_path(
    dtype: torch.dtype, bounded: bool, system: str, batch: int
) -> None:
    bound = 2.0 if bounded else None
    mpc = MPC(3, 1, T, u_lower=-bound if bound else None, u_upper=bound, max_iter=100)
    mpc = mpc.with_options(on_unconverged="ignore")
    dynamics = SYSTEMS[system](dtype=dtype)
    x_init = _states(batch, dtype)
    for kind in ("goal", "quadratic"):
        cost = _cost(kind, dtype, batch)
        fast, fast_grads = _solve(mpc, x_init, cost, dynamics)
        slow, slow_grads = _solve(mpc, x_init, cost, _twinless(dynamics))
        assert fast.info.path == "compiled-ddp" and fast.info.declined is None
        assert slow.info.path == "torch" and "no compiled twin" in slow.info.declined
        assert fast.info.status_names == slow.info.status_names
        assert torch.equal(fast.info.iterations, slow.info.iterations)
        tol = 1e-9 if dtype == torch.float64 else 2e-4
        torch.testing.assert_close(fast.u, slow.u, atol=tol, rtol=0)
        torch.testing.assert_close(fast.x, slow.x, atol=tol, rtol=0)
        torch.testing.assert_close(fast.cost, slow.cost, atol=tol, rtol=tol)
        rtol = 1e-10 if dtype == torch.float64 else 1e-3
        for ours, theirs in zip(fast_grads, slow_grads, strict=True):
            assert (ours is None) == (theirs is None)
            if ours is not None:
                scale = theirs.abs().max().clamp(min=1.0)
                assert (ours - theirs).abs().max() <= rtol * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nonfinite_rows_are_isolated(dtype: torch.dtype) -> None:
    """A row whose state is (0, 0, 0) has no angle (NaN in the analytic Jacobian, which the
    twin's equals: from the dynamics); a row whose cost has a NaN term is non-finite from the
    cost; the others are unaffected."""
    batch = 4
    x_init = _states(batch, dtype)
    x_init[1] = 0.0
    cost = _cost("quadratic", dtype, batch)
    cost.c[3, 5, 0] = float("nan")
    dynamics = PendulumDynamics(dtype=dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore", jacobian="analytic")
    fast, fast_grads = _solve(mpc, x_init, cost, dynamics)
    slow, slow_grads = _solve(mpc, x_init, cost, _twinless(dynamics))
    assert fast.info.path == "compiled-ddp"
    assert fast.info.status_names == slow.info.status_names
    assert fast.info.status_names[1] == fast.info.status_names[3] == "NONFINITE"
    sources = fast.info.nonfinite_source.tolist()
    assert sources == slow.info.nonfinite_source.tolist() == [0, 1, 0, 2]
    assert torch.isnan(fast.u[[1, 3]]).all() and torch.isfinite(fast.u[[0, 2]]).all()
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(fast.u[[0, 2]], slow.u[[0, 2]], atol=tol, rtol=0)
    for ours, theirs in zip(fast_grads, slow_grads, strict=True):
        if ours is not None:
            torch.testing.assert_close(ours, theirs, atol=10 * tol, rtol=10 * tol)
    alone = mpc(x_init[[0]], QuadraticCost(cost.C[[0]], cost.c[[0]]), dynamics)
    torch.testing.assert_close(alone.u[0], fast.u[0], atol=tol, rtol=0)


@pytest.mark.parametrize("system", sorted(ALL_SYSTEMS))
def test_twin_derivatives_match_autograd(system: str) -> None:
    from mpc_policy.numerics.compiled import models

    dynamics = ALL_SYSTEMS[system](dtype=torch.float64)
    kind = {
        "pendulum": models.DYNAMICS_PENDULUM,
        "windy": models.DYNAMICS_WINDY_PENDULUM,
        "cartpole": models.DYNAMICS_CARTPOLE,
    }[system]
    n = dynamics.n_state
    _, params, constants = dynamics.compiled_twin()
    p = torch.stack([q.detach() for q in params]).view(-1, 1).numpy()
    c = np.array(constants)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, n, generator=gen, dtype=torch.float64)  # off the unit circle too
    x[:, -1] *= 4.0
    u = 3.0 * torch.randn(16, 1, generator=gen, dtype=torch.float64)
    lam = torch.randn(16, n, generator=gen, dtype=torch.float64)
    f_next, _, curvature = dynamics_curvature(dynamics, x, u, lam)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda a, b: dynamics(a, b), argnums=(0, 1)))(x, u)
    jacobian = torch.cat(jacobian, -1)
    scratch = np.empty(n + 1), np.empty(n + 1)
    code, work = np.zeros(3, dtype=np.int64), np.zeros(1)
    for r in range(16):
        xs, us = np.zeros((2, n)), np.zeros((2, 1))
        xs[0], us[0] = x[r].numpy(), u[r].numpy()
        lams = np.zeros((2, n))
        lams[1] = lam[r].numpy()
        F, H = np.zeros((1, 1, n, n + 1)), np.zeros((1, 1, n + 1, n + 1))
        model_calls(kind, p, c, xs, us, lams, F, H, *scratch, code, work)
        np.testing.assert_allclose(xs[1], f_next[r].detach().numpy(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(F[0, 0], jacobian[r].detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(H[0, 0], curvature[r].detach().numpy(), rtol=1e-10, atol=1e-10)


def test_parameters_read_at_every_solve_and_per_element() -> None:
    """The twin reads the module's current parameters: after a change, and with one mass per
    batch element (B,), each element equals its own solve with that mass."""
    dtype = torch.float64
    dynamics = PendulumDynamics(dtype=dtype)
    cost = pendulum_cost(dtype=dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    x_init = _states(3, dtype)
    with torch.no_grad():
        dynamics.mass.fill_(1.7)
        fast = mpc(x_init, cost, dynamics)
        slow = mpc(x_init, cost, _twinless(dynamics))
    torch.testing.assert_close(fast.u, slow.u, atol=1e-9, rtol=0)
    masses = torch.tensor([0.6, 1.0, 1.5], dtype=dtype)
    dynamics.mass = nn.Parameter(masses)
    with torch.no_grad():
        batched = mpc(x_init, cost, dynamics)
    assert batched.info.path == "compiled-ddp"
    for b in range(3):
        single = PendulumDynamics(dtype=dtype)
        with torch.no_grad():
            single.mass.fill_(float(masses[b]))
            alone = mpc(x_init[[b]], cost, _twinless(single))
        torch.testing.assert_close(batched.u[b], alone.u[0], atol=1e-9, rtol=0)


def test_fallback_reasons() -> None:
    dtype = torch.float64
    x_init = _states(2, dtype)
    cost = pendulum_cost(dtype=dtype)
    dynamics = PendulumDynamics(dtype=dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    with torch.no_grad():
        plain = mpc(x_init, cost, _twinless(dynamics))
        unrolled = mpc.with_options(grad_method="unroll")(x_init, cost, dynamics)
        torch_backend = mpc.with_options(backend="torch")(x_init, cost, dynamics)
    assert plain.info.path == "torch"
    assert plain.info.declined == "dynamics (NoTwinPendulumDynamics) has no compiled twin"
    assert "unroll" in unrolled.info.declined
    assert torch_backend.info.declined.startswith("the backend is torch")
    for solution in (plain, unrolled, torch_backend):
        assert solution.info.path == "torch"


class _Torque(nn.Module):
    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u - 1.5


def test_fallback_with_constraints() -> None:
    dtype = torch.float64
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, constraints=_Torque(), on_unconverged="ignore")
    with torch.no_grad():
        solution = mpc(_states(2, dtype), pendulum_cost(dtype=dtype), PendulumDynamics(dtype=dtype))
    assert solution.info.path == "torch"
    assert solution.info.declined.startswith("constraints beside the box")


class _Cost(nn.Module):
    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (x * x).sum(-1) + 0.01 * (u * u).sum(-1)


def test_fallback_for_a_cost_without_twin() -> None:
    dtype = torch.float64
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    with torch.no_grad():
        solution = mpc(_states(2, dtype), _Cost(), PendulumDynamics(dtype=dtype))
    assert solution.info.path == "torch"
    assert solution.info.declined == "cost (_Cost) has no compiled twin"


def test_float32_batch_of_the_benchmark_problem() -> None:
    """B = 64 of the benchmark's float32 pendulum (a quadratic cost, |u| <= 2): the compiled
    path (float64 arithmetic, float32 tolerance) ends as the float32 torch path does."""
    dtype = torch.float32
    x_init = _states(64, dtype, seed=5)
    cost = _cost("quadratic", dtype, 64)
    dynamics = PendulumDynamics(dtype=dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    with torch.no_grad():
        fast = mpc(x_init, cost, dynamics)
        slow = mpc(x_init, cost, _twinless(dynamics))
    assert fast.info.path == "compiled-ddp" and fast.u.dtype == dtype
    assert fast.info.status_names == slow.info.status_names
    torch.testing.assert_close(fast.u, slow.u, atol=2e-4, rtol=0)
    torch.testing.assert_close(fast.cost, slow.cost, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("batch", [1, 5])
def test_cartpole_compiled_path_equals_torch_path(
    dtype: torch.dtype, bounded: bool, batch: int
) -> None:
    gen = torch.Generator().manual_seed(7)
    theta = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * 2.0 * math.pi
    x_init = torch.stack(
        [
            torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5,
            torch.zeros(batch, dtype=torch.float64),
            theta.cos(),
            theta.sin(),
            torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5,
        ],
        -1,
    ).to(dtype)
    bound = 10.0 if bounded else None
    mpc = MPC(5, 1, T, u_lower=-bound if bound else None, u_upper=bound, max_iter=100)
    mpc = mpc.with_options(on_unconverged="ignore")
    dynamics = CartPoleDynamics(dtype=dtype)
    cost = cartpole_cost(dtype=dtype)
    fast, fast_grads = _solve(mpc, x_init, cost, dynamics)
    slow, slow_grads = _solve(mpc, x_init, cost, _twinless(dynamics))
    assert fast.info.path == "compiled-ddp" and slow.info.path == "torch"
    assert fast.info.status_names == slow.info.status_names
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(fast.u, slow.u, atol=tol * 10, rtol=0)
    torch.testing.assert_close(fast.x, slow.x, atol=tol, rtol=0)
    if dtype == torch.float64:
        assert torch.equal(fast.info.iterations, slow.info.iterations)
        for ours, theirs in zip(fast_grads, slow_grads, strict=True):
            if ours is not None:
                scale = theirs.abs().max().clamp(min=1.0)
                assert (ours - theirs).abs().max() <= 1e-10 * scale


@pytest.mark.parametrize("horizon", [1, 2])
def test_short_horizons_warm_start_and_one_sided_bounds(horizon: int) -> None:
    """T = 1 and 2, a warm start (left unchanged), a one-sided and a per-element bound."""
    dtype = torch.float64
    dynamics = PendulumDynamics(dtype=dtype)
    cost = pendulum_cost(dtype=dtype)
    x_init = _states(3, dtype)
    u_init = torch.randn(3, horizon, 1, generator=torch.Generator().manual_seed(2), dtype=dtype)
    saved = u_init.clone()
    lower = -0.5 - torch.rand(3, horizon, 1, generator=torch.Generator().manual_seed(4))
    for u_lower, u_upper in ((-2.0, 2.0), (None, 1.0), (lower.to(dtype), None)):
        mpc = MPC(3, 1, horizon, u_lower=u_lower, u_upper=u_upper, on_unconverged="ignore")
        fast = mpc(x_init, cost, dynamics, u_init=u_init)
        slow = mpc(x_init, cost, _twinless(dynamics), u_init=u_init)
        assert fast.info.path == "compiled-ddp"
        assert torch.equal(u_init, saved)
        assert fast.info.status_names == slow.info.status_names
        assert torch.equal(fast.info.iterations, slow.info.iterations)
        torch.testing.assert_close(fast.u, slow.u, atol=1e-12, rtol=0)
