"""One poisoned row never changes another row's answer or a shared parameter's gradient.

A batch of 64 pendulum problems with row 7 poisoned (NaN or Inf from the dynamics or the
cost, a NaN per-element parameter, a cost without a minimizer) must give the other 63 rows
the values, and every shared parameter and initial state the gradient, of solving those 63
alone (1e-10, float64), for the on_unconverged policies that let the solve return; the
poisoned row is reported with its own status.
"""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, AffineDynamics, QuadraticCost, Status
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

F64 = torch.float64
B, T, BAD = 64, 12, 7
GOOD = torch.tensor([i for i in range(B) if i != BAD])


class OutOfDomain(nn.Module):
    """A module that returns ``value`` on rows whose velocity leaves [-50, 50] (a model
    used outside its domain); the poisoned row starts at velocity 100."""

    def __init__(self, inner: nn.Module, value: float, per_step: bool) -> None:
        super().__init__()
        self.inner, self.value, self.per_step = inner, value, per_step

    def compiled_twin(self) -> None:
        """None: these tests are about the box_ddp loop's isolation (the compiled path's
        is tested in test_compiled_ddp.py and test_traced_models.py)."""
        return None

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        out = self.inner(x, u)
        outside = x[..., 2].abs() > 50
        if not self.per_step:  # dynamics: (N, n)
            outside = outside.unsqueeze(-1)
        return torch.where(outside, torch.full_like(out, self.value), out)


class TorqueGain(nn.Module):
    """Pendulum driven through a per-element torque gain (B,): parameters per batch
    element, read in the solver's row layout (row r is element r mod B)."""

    def __init__(self, pendulum: PendulumDynamics, gain: Tensor) -> None:
        super().__init__()
        self.pendulum, self.gain = pendulum, gain

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        gain = self.gain.repeat(x.shape[0] // self.gain.shape[0]).unsqueeze(-1)
        return self.pendulum(x, gain * u)

    def select_batch(self, index: Tensor) -> TorqueGain:
        return TorqueGain(self.pendulum, self.gain[index])


def _pendulum_case(kind: str) -> tuple[Tensor, nn.Module, nn.Module, list[Tensor], dict]:
    x_init = start_states(B, seed=3)
    pendulum, cost = PendulumDynamics(), pendulum_cost()
    shared = [pendulum.g, pendulum.m, pendulum.l, cost.raw_weights, cost.goal]
    dynamics: nn.Module = pendulum
    if kind in ("nan_dynamics", "inf_dynamics", "nan_cost"):
        x_init[BAD, 2] = 100.0
    if kind == "nan_dynamics":
        dynamics = OutOfDomain(pendulum, float("nan"), per_step=False)
    elif kind == "inf_dynamics":
        dynamics = OutOfDomain(pendulum, float("inf"), per_step=False)
    elif kind == "nan_cost":
        cost = OutOfDomain(cost, float("nan"), per_step=True)
    elif kind == "nan_parameter":
        gain = torch.ones(B, dtype=F64)
        gain[BAD] = float("nan")
        dynamics = TorqueGain(pendulum, gain)
    bounds = {"u_lower": -2.0, "u_upper": 2.0}
    return x_init, cost, dynamics, shared, bounds


def _indefinite_case() -> tuple[Tensor, nn.Module, nn.Module, list[Tensor], dict]:
    """Affine dynamics with a shared learnable F; row 7's control cost is negative."""
    g = torch.Generator().manual_seed(11)
    n, m = 3, 2
    F = nn.Parameter(
        torch.cat(
            [0.9 * torch.eye(n, dtype=F64), 0.3 * torch.randn(n, m, generator=g, dtype=F64)], 1
        )
    )
    c = nn.Parameter(0.1 * torch.randn(T, n + m, generator=g, dtype=F64))
    C = torch.eye(n + m, dtype=F64).repeat(B, T, 1, 1)
    C[BAD, :, n:, n:] = -0.5 * torch.eye(m, dtype=F64)
    x_init = torch.randn(B, n, generator=g, dtype=F64)
    return x_init, QuadraticCost(C, c), AffineDynamics(F), [F, c], {}


def _case(kind: str) -> tuple[Tensor, nn.Module, nn.Module, list[Tensor], dict]:
    return _indefinite_case() if kind == "indefinite_cost" else _pendulum_case(kind)


def _restricted(module: nn.Module, index: Tensor) -> nn.Module:
    if isinstance(module, OutOfDomain):
        return module
    select = getattr(module, "select_batch", None)
    return select(index) if callable(select) else module


def _solve(mpc: MPC, x_init: Tensor, cost: nn.Module, dynamics: nn.Module, rows: Tensor):
    x0 = x_init.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sol = mpc(x0, cost, dynamics)
    generator = torch.Generator().manual_seed(5)
    wu = torch.randn(B, *sol.u.shape[1:], generator=generator, dtype=F64)[rows]
    wx = torch.randn(B, *sol.x.shape[1:], generator=generator, dtype=F64)[rows]
    whole = sol.u.shape[0] == B  # the batch with the poisoned row: read the good rows
    good_u, good_x, good_cost = (z[rows] if whole else z for z in (sol.u, sol.x, sol.cost))
    loss = (good_u * wu).sum() + 0.1 * (good_x * wx).sum() + 0.01 * good_cost.sum()
    return sol, loss, x0


KINDS = ["nan_dynamics", "inf_dynamics", "nan_cost", "nan_parameter", "indefinite_cost"]


@pytest.mark.parametrize("policy", ["warn", "zero_grad"])
@pytest.mark.parametrize("kind", KINDS)
def test_poisoned_row_changes_no_other_row_and_no_shared_gradient(kind: str, policy: str) -> None:
    x_init, cost, dynamics, shared, bounds = _case(kind)
    n, m = x_init.shape[1], 1 if bounds else 2
    mpc = MPC(n, m, T, tol=1e-10, max_iter=100, on_unconverged=policy, **bounds)

    batch, loss, x0 = _solve(mpc, x_init, cost, dynamics, GOOD)
    batch_grads = torch.autograd.grad(loss, [*shared, x0])

    alone_cost, alone_dynamics = _restricted(cost, GOOD), _restricted(dynamics, GOOD)
    alone, alone_loss, x0_alone = _solve(mpc, x_init[GOOD], alone_cost, alone_dynamics, GOOD)
    alone_grads = torch.autograd.grad(alone_loss, [*shared, x0_alone])

    expected = Status.INDEFINITE if kind == "indefinite_cost" else Status.NONFINITE
    assert batch.info.status_names[BAD] == expected.name
    assert not bool(batch.info.converged[BAD])
    assert alone.info.all_converged
    if expected == Status.NONFINITE:
        assert bool(batch.u[BAD].isnan().all()) and bool(batch.cost[BAD].isnan())
    for got, want in ((batch.u[GOOD], alone.u), (batch.x[GOOD], alone.x)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(batch.cost[GOOD], alone.cost, atol=1e-10, rtol=1e-12)
    for got, want in zip(batch_grads[:-1], alone_grads[:-1]):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(batch_grads[-1][GOOD], alone_grads[-1], atol=1e-10, rtol=1e-10)
    assert bool((batch_grads[-1][BAD] == 0).all())


@pytest.mark.parametrize("kind", ["nan_dynamics", "nan_cost"])
def test_poisoned_row_raises_with_its_status_under_raise(kind: str) -> None:
    x_init, cost, dynamics, _, bounds = _case(kind)
    mpc = MPC(3, 1, T, on_unconverged="raise", **bounds)
    with pytest.raises(RuntimeError, match=rf"NONFINITE at indices \[{BAD}\]"):
        mpc(x_init, cost, dynamics)


def test_per_element_module_without_select_batch_is_told_what_it_needs() -> None:
    """Leaving a NaN row out of the gradient evaluates the modules on the other rows: a
    module with per-element parameters and no ``select_batch`` fails there, with a note."""

    class NoSelect(TorqueGain):
        select_batch = None  # type: ignore[assignment]

    x_init, cost, dynamics, _, bounds = _pendulum_case("nan_parameter")
    assert isinstance(dynamics, TorqueGain)
    no_select = NoSelect(dynamics.pendulum, dynamics.gain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError) as caught:
            MPC(3, 1, T, **bounds)(x_init, cost, no_select)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "63 of the 64 batch elements" in notes and "select_batch" in notes


@pytest.mark.parametrize("kind", ["nan_dynamics", "nan_parameter"])
def test_poisoned_row_is_isolated_in_unrolled_gradients(kind: str) -> None:
    x_init, cost, dynamics, shared, bounds = _case(kind)
    mpc = MPC(3, 1, T, tol=1e-10, max_iter=100, grad_method="unroll", **bounds)
    batch, loss, x0 = _solve(mpc, x_init, cost, dynamics, GOOD)
    batch_grads = torch.autograd.grad(loss, [*shared, x0])
    alone_cost, alone_dynamics = _restricted(cost, GOOD), _restricted(dynamics, GOOD)
    alone, alone_loss, x0_alone = _solve(mpc, x_init[GOOD], alone_cost, alone_dynamics, GOOD)
    alone_grads = torch.autograd.grad(alone_loss, [*shared, x0_alone])
    assert batch.info.status_names[BAD] == "NONFINITE"
    torch.testing.assert_close(batch.u[GOOD], alone.u, atol=1e-10, rtol=0)
    for got, want in zip(batch_grads[:-1], alone_grads[:-1]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(batch_grads[-1][GOOD], alone_grads[-1], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("kind", "source"), [("nan_dynamics", "dynamics"), ("nan_cost", "cost")])
def test_the_report_says_which_module_turned_non_finite(kind: str, source: str) -> None:
    x_init, cost, dynamics, _, bounds = _case(kind)
    with pytest.warns(
        RuntimeWarning, match=rf"NONFINITE at indices \[{BAD}\] \(from the {source} at \[{BAD}\]\)"
    ):
        MPC(3, 1, T, **bounds)(x_init, cost, dynamics)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
@pytest.mark.parametrize("where", ["dynamics", "cost"])
def test_a_frozen_element_feeds_the_next_iteration_a_finite_neutral_model(
    where: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Isolation on what the loop computes with, not only on what it returns: once an
    element turns non-finite, every backward pass after that gets its local model as
    C = I, g = 0, F = 0, never its NaN or Inf (a kernel that mixed elements would spread it)."""
    mpc_module = importlib.import_module("mpc_policy.mpc")
    real = mpc_module.select
    fed: list[tuple[Tensor, Tensor, Tensor]] = []

    def recording(*args, **kwargs):
        kernels = real(*args, **kwargs)
        inner = kernels.backward_recursion

        def recursion(C, g, F, *rest, **options):
            fed.append((C.clone(), g.clone(), F.clone()))
            return inner(C, g, F, *rest, **options)

        return kernels._replace(backward_recursion=recursion)

    monkeypatch.setattr(mpc_module, "select", recording)
    batch, bad = 4, 1
    x_init = start_states(batch, seed=3)
    x_init[bad, 2] = 100.0
    dynamics: nn.Module = PendulumDynamics()
    cost: nn.Module = pendulum_cost()
    if where == "dynamics":
        dynamics = OutOfDomain(dynamics, float("nan"), per_step=False)
    else:
        cost = OutOfDomain(cost, float("nan"), per_step=True)
    mpc = MPC(3, 1, T, -2.0, 2.0, backend=backend, on_unconverged="ignore")
    solution = mpc(x_init, cost, dynamics)
    assert solution.info.codes[bad] == int(Status.NONFINITE)
    assert fed, "no backward pass was recorded"
    eye = torch.eye(4, dtype=F64)
    for C, g, F in fed:
        assert all(bool(torch.isfinite(z).all()) for z in (C, g, F))
        if C.shape[1] == batch:  # a pass over the whole batch: the frozen row is neutral
            assert torch.equal(C[:, bad], eye.expand_as(C[:, bad]))
            assert not bool(g[:, bad].any()) and not bool(F[:, bad].any())
