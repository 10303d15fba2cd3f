"""The compiled path's conversion of its inputs: one C-ordered float64 copy of the controls and
bounds whatever their layout (expanded, transposed, with a graph), so every layout gives the
same solution as its contiguous copy and the kernel keeps one specialization per layout of
the problem (no recompilation for a bound given as a float, (m,), (B, T, m) or with a
graph); and the returned cost: where a gradient can flow, the cost module's value (it is
differentiable); under no_grad, the kernel's own float64 sum, equal to it to rounding (the
module is not called again: a policy step spends its time elsewhere)."""

from __future__ import annotations

import math

import pytest
import torch

from mpc_policy import MPC
from mpc_policy.envs import PendulumDynamics, PendulumParams, pendulum_cost
from mpc_policy.numerics.compiled._arrays import as_strided
from mpc_policy.solve.backend import ENVIRONMENT_VARIABLE, compiled_available

pytestmark = pytest.mark.skipif(not compiled_available(), reason="needs numba")

T, B = 12, 3


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


def _states() -> torch.Tensor:
    theta = torch.tensor([0.3, -2.0, math.pi - 0.1], dtype=torch.float64)
    return torch.stack([theta.cos(), theta.sin(), torch.zeros(B, dtype=torch.float64)], -1)


def test_as_strided_is_a_view_of_any_layout() -> None:
    base = torch.arange(6.0, dtype=torch.float64).view(2, 3)
    for z in (base.t(), base.expand(4, 2, 3), base[:, ::2], base.clone().requires_grad_()):
        view = as_strided(z)
        assert view.shape == tuple(z.shape)
        assert (view == z.detach().numpy()).all()


@pytest.mark.parametrize("warm", [False, True])
def test_bound_layouts_give_the_contiguous_solution(warm: bool) -> None:
    from mpc_policy.numerics.compiled.ddp import _solve

    dynamics = PendulumDynamics(PendulumParams(), dtype=torch.float64)
    cost = pendulum_cost(dtype=torch.float64)
    x0 = _states()
    u_init = None
    if warm:  # a transposed warm start, as MPCPolicy's cached plan is seen by the kernel
        u_init = torch.linspace(-1.0, 1.0, T * B, dtype=torch.float64).view(T, B, 1)
        u_init = u_init.transpose(0, 1)
    per_step = torch.linspace(0.5, 2.0, T, dtype=torch.float64).view(1, T, 1)
    layouts = {
        "float": (-2.0, 2.0),
        "(m,)": (torch.tensor([-2.0], dtype=torch.float64), torch.tensor([2.0])),
        "(1, T, m)": (-per_step, per_step),
        "(B, T, m) contiguous": (-per_step.expand(B, T, 1).clone(), per_step.expand(B, T, 1)),
        "with a graph": (-per_step.clone().requires_grad_(), per_step.clone().requires_grad_()),
    }
    with torch.no_grad():  # the kernel compiled for this problem before counting
        MPC(3, 1, T, -2.0, 2.0, on_unconverged="ignore")(x0, cost, dynamics, u_init)
    signatures = len(_solve.signatures)
    solutions = {}
    for name, (lower, upper) in layouts.items():
        lower = lower.to(torch.float64) if isinstance(lower, torch.Tensor) else lower
        upper = upper.to(torch.float64) if isinstance(upper, torch.Tensor) else upper
        mpc = MPC(3, 1, T, lower, upper, on_unconverged="ignore")
        with torch.no_grad():
            solutions[name] = mpc(x0, cost, dynamics, u_init)
        assert solutions[name].info.path == "compiled-ddp", solutions[name].info.declined
    # the same problem again, bounds per step given contiguous: the same numbers
    contiguous = MPC(3, 1, T, -per_step.expand(B, T, 1).clone(), per_step.expand(B, T, 1).clone())
    contiguous.options = MPC(3, 1, T, on_unconverged="ignore").options
    with torch.no_grad():
        reference = contiguous(x0, cost, dynamics, u_init)
    for name in ("(1, T, m)", "(B, T, m) contiguous", "with a graph"):
        assert torch.equal(solutions[name].u, reference.u), name
        assert torch.equal(solutions[name].x, reference.x), name
        assert torch.equal(solutions[name].cost, reference.cost), name
    assert torch.equal(solutions["float"].u, solutions["(m,)"].u)
    # no layout made the kernel compile another specialization
    assert len(_solve.signatures) == signatures


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_returned_cost_is_the_cost_modules_value(dtype: torch.dtype) -> None:
    dynamics = PendulumDynamics(PendulumParams(), dtype=dtype)
    cost = pendulum_cost(dtype=dtype)
    mpc = MPC(3, 1, T, -2.0, 2.0, on_unconverged="ignore")
    x_init = _states().to(dtype).requires_grad_()
    solution = mpc(x_init, cost, dynamics)
    assert solution.cost.requires_grad
    assert torch.equal(solution.cost, cost(solution.x, solution.u).sum(-1))
    with torch.no_grad():
        values = mpc(x_init, cost, dynamics)
        module_value = cost(values.x, values.u).sum(-1)
    assert values.info.path == "compiled-ddp"
    assert torch.equal(values.u, solution.u.detach())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(values.cost, module_value, rtol=8 * eps, atol=0.0)
    assert not torch.equal(values.cost, torch.zeros_like(values.cost))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_all_finite_on_every_kind_of_tensor(bad: float | None) -> None:
    """The numpy check (plain CPU tensors) and the torch one (a graph, bfloat16, a
    non-contiguous view) answer alike."""
    from mpc_policy.problem.validation import all_finite

    base = torch.arange(12.0, dtype=torch.float64).view(3, 4)
    if bad is not None:
        base[1, 2] = bad
    kinds = [
        base,
        base.float(),
        base.t(),
        base.expand(2, 3, 4),
        base.clone().requires_grad_(),
        base.to(torch.bfloat16),
    ]
    for tensor in kinds:
        assert all_finite(tensor) is (bad is None), tensor.dtype
