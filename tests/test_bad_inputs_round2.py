"""Bad inputs, round two (issue 24): silent wrong answers that become right answers or
named errors. Each reference is independent of the solver's gradient: one-sided finite
differences in the feasible direction, a copy of the caller's data, or the error's text.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import MPC, lqr_solve
from mpc_policy.compat import mpc as compat_mpc
from mpc_policy.compat.mpc import LinDx, QuadCost
from tests.constrained_problems import VelocityLimit
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

F64 = torch.float64
BACKENDS = ["torch", "compiled"]


# ---- 1. a control pinned by its bounds (u_lower == u_upper) ---------------------------------


def _pinned_lqr(backend: str):
    """A bounded LQR problem whose control 0 is pinned at t = 1 in both elements: in element 0
    the cost pushes it down (the lower bound is the active one), in element 1 up."""
    generator = torch.Generator().manual_seed(3)
    B, T, n, m = 2, 4, 2, 2
    d = n + m
    A = torch.randn(B, T, d, d, generator=generator, dtype=F64)
    C = A @ A.transpose(-1, -2) + d * torch.eye(d, dtype=F64)
    c = torch.randn(B, T, d, generator=generator, dtype=F64)
    F = 0.4 * torch.randn(B, T - 1, n, d, generator=generator, dtype=F64)
    f = torch.randn(B, T - 1, n, generator=generator, dtype=F64)
    x_init = torch.randn(B, n, generator=generator, dtype=F64)
    lower = torch.full((B, T, m), -5.0, dtype=F64)
    upper = torch.full((B, T, m), 5.0, dtype=F64)
    free = lqr_solve(x_init, C, c, F, f, lower, upper, backend=backend).u.detach()
    pin = torch.stack([free[0, 1, 0] + 0.5, free[1, 1, 0] - 0.5])
    lower[:, 1, 0] = pin
    upper[:, 1, 0] = pin

    def loss(lo: Tensor, hi: Tensor) -> Tensor:
        u = lqr_solve(x_init, C, c, F, f, lo, hi, backend=backend).u
        return (u * torch.arange(1.0, 1.0 + u.numel(), dtype=F64).view_as(u)).sum()

    return loss, lower, upper


def _one_sided(loss, lower: Tensor, upper: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """d loss / d lower (lower moved down) and d loss / d upper (upper moved up), entry by
    entry: the only direction in which a pinned bound can move on its own."""
    with torch.no_grad():
        base = loss(lower, upper)
        d_lower, d_upper = torch.zeros_like(lower), torch.zeros_like(upper)
        for index in torch.cartesian_prod(*(torch.arange(s) for s in lower.shape)).tolist():
            index = tuple(index)
            lo = lower.clone()
            lo[index] -= eps
            d_lower[index] = (base - loss(lo, upper)) / eps
            hi = upper.clone()
            hi[index] += eps
            d_upper[index] = (loss(lower, hi) - base) / eps
    return d_lower, d_upper


@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_control_bound_gradients_match_one_sided_differences_lqr(backend: str) -> None:
    loss, lower, upper = _pinned_lqr(backend)
    lo, hi = lower.clone().requires_grad_(), upper.clone().requires_grad_()
    d_lower, d_upper = torch.autograd.grad(loss(lo, hi), (lo, hi))
    fd_lower, fd_upper = _one_sided(loss, lower, upper)
    torch.testing.assert_close(d_lower, fd_lower, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d_upper, fd_upper, atol=1e-4, rtol=1e-4)
    # the pinned entries: the whole derivative on the side the cost pushes against
    assert d_lower[0, 1, 0] != 0 and d_upper[0, 1, 0] == 0
    assert d_upper[1, 1, 0] != 0 and d_lower[1, 1, 0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_control_bound_gradients_sum_to_the_pinned_values_derivative(backend: str) -> None:
    # moving both bounds together moves the pinned control: central differences are defined
    loss, lower, upper = _pinned_lqr(backend)
    lo, hi = lower.clone().requires_grad_(), upper.clone().requires_grad_()
    d_lower, d_upper = torch.autograd.grad(loss(lo, hi), (lo, hi))
    eps = 1e-6
    with torch.no_grad():
        for b in range(2):
            step = torch.zeros_like(lower)
            step[b, 1, 0] = eps
            central = (loss(lower + step, upper + step) - loss(lower - step, upper - step)) / (
                2 * eps
            )
            total = d_lower[b, 1, 0] + d_upper[b, 1, 0]
            torch.testing.assert_close(total, central, atol=1e-5, rtol=1e-5)


def _pendulum_mpc(backend: str, lower: Tensor, upper: Tensor, constrained: bool = False) -> Tensor:
    options = {"constraints": VelocityLimit(5.0), "constraint_tol": 1e-12} if constrained else {}
    mpc = MPC(3, 1, 6, lower, upper, backend=backend, tol=1e-10, max_iter=100, **options)
    solution = mpc(start_states(2, seed=1), pendulum_cost(), PendulumDynamics())
    assert bool(solution.info.converged.all())
    return (solution.u * torch.arange(1.0, 13.0, dtype=F64).view(2, 6, 1)).sum()


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pinned_control_bound_gradients_match_one_sided_differences_mpc(
    backend: str, constrained: bool
) -> None:
    B, T = 2, 6
    # wide bounds: the free controls are interior, so the pin is what binds
    lower = torch.full((B, T, 1), -20.0, dtype=F64)
    upper = torch.full((B, T, 1), 20.0, dtype=F64)
    with torch.no_grad():
        free = MPC(3, 1, T, lower, upper, backend=backend, tol=1e-10)(
            start_states(B, seed=1), pendulum_cost(), PendulumDynamics()
        ).u
    pin = torch.stack([free[0, 2, 0] + 0.3, free[1, 2, 0] - 0.3])
    lower[:, 2, 0] = pin
    upper[:, 2, 0] = pin

    def loss(lo: Tensor, hi: Tensor) -> Tensor:
        return _pendulum_mpc(backend, lo, hi, constrained)

    lo, hi = lower.clone().requires_grad_(), upper.clone().requires_grad_()
    d_lower, d_upper = torch.autograd.grad(loss(lo, hi), (lo, hi))
    fd_lower, fd_upper = _one_sided(loss, lower, upper)
    torch.testing.assert_close(d_lower, fd_lower, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(d_upper, fd_upper, atol=1e-4, rtol=1e-3)
    assert d_lower[0, 2, 0] != 0 and d_upper[0, 2, 0] == 0
    assert d_upper[1, 2, 0] != 0 and d_lower[1, 2, 0] == 0


# ---- 2. modules that update their inputs in place -------------------------------------------


class InPlaceDynamics(PendulumDynamics):
    """The pendulum, writing its next state into its input ``x`` (three ways)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        following = super().forward(x.clone(), u)
        if self.how == "copy_":
            return x.copy_(following)
        if self.how == "add_":
            return x.add_(following - x)
        x[:, 2] = following[:, 2]  # index assignment
        return torch.stack([following[:, 0], following[:, 1], x[:, 2]], dim=-1)


class InPlaceCost(nn.Module):
    """The pendulum cost, scaling its input ``x`` in place first."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = pendulum_cost()

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        x.mul_(2.0)
        return self.inner(x / 2.0, u)


def _gradients(dynamics: nn.Module, cost: nn.Module, backend: str) -> tuple[Tensor, ...]:
    x_init = start_states(3, seed=0).requires_grad_()
    solution = MPC(3, 1, 10, -2.0, 2.0, backend=backend)(x_init, cost, dynamics)
    loss = (solution.u * torch.linspace(1.0, 2.0, 10, dtype=F64).view(1, 10, 1)).sum()
    grads = torch.autograd.grad(loss, (x_init, dynamics.g, dynamics.m))
    return (solution.u.detach(), *grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["copy_", "add_", "index"])
def test_dynamics_writing_into_their_input_leave_x_init_and_the_answer_intact(
    how: str, backend: str
) -> None:
    x_init = start_states(3, seed=0)
    before = x_init.clone()
    with torch.no_grad():
        MPC(3, 1, 10, -2.0, 2.0, backend=backend)(x_init, pendulum_cost(), InPlaceDynamics(how))
    assert torch.equal(x_init, before)
    expected = _gradients(PendulumDynamics(), pendulum_cost(), backend)
    received = _gradients(InPlaceDynamics(how), pendulum_cost(), backend)
    for want, got in zip(expected, received, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_a_cost_writing_into_its_input_changes_nothing() -> None:
    expected = _gradients(PendulumDynamics(), pendulum_cost(), "torch")
    received = _gradients(PendulumDynamics(), InPlaceCost(), "torch")
    for want, got in zip(expected, received, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_module_writing_into_its_input_is_guarded_in_every_later_solve(backend: str) -> None:
    # the guard's verdict is kept with the module: the second solve copies from its first call
    dynamics, cost = InPlaceDynamics("copy_"), InPlaceCost()
    expected = _gradients(PendulumDynamics(), pendulum_cost(), backend)
    for _ in range(2):
        received = _gradients(dynamics, cost, backend)
        for want, got in zip(expected, received, strict=True):
            torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


class UnbindThenAdd(PendulumDynamics):
    """Writes into its input after taking views of it that autograd must keep."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        following = super().forward(x, u)  # unbind views of x
        return x.add_(following - x)


class SavedThenScaled(PendulumDynamics):
    """Scales its input in place after autograd saved it for a product."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        square = x * x
        x.mul_(0.5)
        return super().forward(x, u) + 1e-3 * square


@pytest.mark.parametrize("module", [UnbindThenAdd, SavedThenScaled])
def test_an_in_place_update_autograd_cannot_follow_is_an_error_naming_the_module(
    module: type,
) -> None:
    x_init = start_states(3, seed=0).requires_grad_()
    with pytest.raises(
        ValueError, match=rf"dynamics \({module.__name__}\) updated a tensor in place"
    ):
        MPC(3, 1, 10, -2.0, 2.0, backend="torch")(x_init, pendulum_cost(), module())


# ---- 3. double backward through a nonlinear MPC ---------------------------------------------


def _lqr_double_backward_works() -> bool:
    generator = torch.Generator().manual_seed(0)
    n, m, T = 2, 1, 4
    C = torch.eye(n + m, dtype=F64).expand(T, n + m, n + m)
    c = torch.zeros(T, n + m, dtype=F64)
    F = torch.randn(T - 1, n, n + m, generator=generator, dtype=F64)
    f = torch.zeros(T - 1, n, dtype=F64)
    x_init = torch.randn(2, n, generator=generator, dtype=F64).requires_grad_()
    u = lqr_solve(x_init, C, c, F, f, -0.5, 0.5, backend="torch").u
    (grad,) = torch.autograd.grad((u**2).sum(), x_init, create_graph=True)
    return grad.requires_grad


@pytest.mark.parametrize("grad_method", ["exact", "paper"])
def test_double_backward_through_mpc_is_refused_by_name(grad_method: str) -> None:
    x_init = start_states(2, seed=0).requires_grad_()
    dynamics = PendulumDynamics()
    mpc = MPC(3, 1, 6, -2.0, 2.0, grad_method=grad_method, backend="torch")
    u = mpc(x_init, pendulum_cost(), dynamics).u
    with pytest.raises(ValueError, match="create_graph: a double backward"):
        torch.autograd.grad((u**2).sum(), (x_init, dynamics.g), create_graph=True)
    # a first-order backward of the same kind of solve is untouched
    u = mpc(x_init, pendulum_cost(), dynamics).u
    (grad,) = torch.autograd.grad((u**2).sum(), x_init)
    assert bool(torch.isfinite(grad).all()) and not grad.requires_grad
    # and lqr_solve, whose double backward is exact, still gives one
    assert _lqr_double_backward_works()


def test_first_order_double_backward_is_exact_where_the_outer_derivative_vanishes() -> None:
    """``double_backward="first_order"`` (TRPO's Fisher-vector products): the Hessian of
    ||u(x_init) - u(x_0)||^2 at x_0 is 2 J'J, which needs first derivatives of u only."""
    x0 = start_states(2, seed=1)
    cost, dynamics = pendulum_cost(), PendulumDynamics()
    mpc = MPC(3, 1, 6, -2.0, 2.0, double_backward="first_order", max_iter=100, tol=1e-12)
    u0 = mpc(x0, cost, dynamics).u.detach()
    x_init = x0.clone().requires_grad_()
    (grad,) = torch.autograd.grad((mpc(x_init, cost, dynamics).u - u0).square().sum(), x_init,
                                  create_graph=True)  # fmt: skip
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    (hessian_v,) = torch.autograd.grad((grad * v).sum(), x_init)
    jacobian = torch.autograd.functional.jacobian(lambda x: mpc(x, cost, dynamics).u, x0)
    J = jacobian.reshape(-1, x0.numel())
    torch.testing.assert_close(hessian_v.flatten(), 2 * J.T @ (J @ v.flatten()), rtol=1e-7,
                               atol=1e-9)  # fmt: skip


# ---- 5. half precision, 6. tensors on another device ----------------------------------------


def _lqr_data(dtype: torch.dtype = F64) -> dict[str, Tensor]:
    n, m, T = 2, 1, 4
    return {
        "x_init": torch.ones(3, n, dtype=dtype),
        "C": torch.eye(n + m, dtype=dtype).expand(T, n + m, n + m),
        "c": torch.zeros(T, n + m, dtype=dtype),
        "F": torch.ones(T - 1, n, n + m, dtype=dtype) * 0.1,
        "f": torch.zeros(T - 1, n, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["x_init", "C", "c", "F", "f"])
def test_half_precision_is_refused_at_the_entry_of_lqr_solve(name: str, dtype: torch.dtype) -> None:
    data = _lqr_data(dtype) if name == "x_init" else _lqr_data()
    data[name] = data[name].to(dtype)
    message = rf"{name}: expected dtype torch.float32 or torch.float64, received {dtype}"
    with pytest.raises(TypeError, match=message):
        lqr_solve(**data, u_lower=-1.0, u_upper=1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_at_the_entry_of_mpc(dtype: torch.dtype) -> None:
    mpc = MPC(3, 1, 5, -2.0, 2.0)
    with pytest.raises(TypeError, match=rf"x_init: expected dtype .* received {dtype}"):
        mpc(start_states(2, seed=0).to(dtype), pendulum_cost(dtype), PendulumDynamics())
    u_init = torch.zeros(2, 5, 1, dtype=dtype)
    with pytest.raises(TypeError, match=rf"u_init: expected dtype .* received {dtype}"):
        mpc(start_states(2, seed=0), pendulum_cost(), PendulumDynamics(), u_init=u_init)


def test_u_init_on_another_device_is_an_error_naming_it() -> None:
    # the meta device stands in for any other device (no GPU needed)
    mpc = MPC(3, 1, 5, -2.0, 2.0)
    u_init = torch.zeros(2, 5, 1, dtype=F64, device="meta")
    with pytest.raises(ValueError, match=r"u_init: expected device cpu .* received meta"):
        mpc(start_states(2, seed=0), pendulum_cost(), PendulumDynamics(), u_init=u_init)


# ---- 10. unconverged elements get no gradient by default ------------------------------------


def test_by_default_an_unconverged_element_gets_no_gradient_and_one_summary_warning() -> None:
    x_init = start_states(4, seed=0)
    x_init[0] = torch.tensor([1.0, 0.0, 0.0], dtype=F64)  # upright: converges at once
    dynamics = PendulumDynamics()
    leaf = x_init.clone().requires_grad_()
    with pytest.warns(RuntimeWarning) as caught:
        solution = MPC(3, 1, 10, -2.0, 2.0, max_iter=2)(leaf, pendulum_cost(), dynamics)
    unconverged = (~solution.info.converged).nonzero().flatten().tolist()
    assert unconverged == [2]  # the problem this test is about: one of four stops early
    assert len(caught) == 1
    assert "their gradients are zeroed (1 of 4 elements" in str(caught[0].message)
    d_x, d_g = torch.autograd.grad(solution.u.sum(), (leaf, dynamics.g))
    assert bool((d_x[2] == 0).all()) and bool((d_x[[0, 1, 3]] != 0).any())
    # the shared parameter's gradient is that of the converged elements solved alone
    keep = [0, 1, 3]
    alone = PendulumDynamics()
    u = MPC(3, 1, 10, -2.0, 2.0, max_iter=2)(x_init[keep], pendulum_cost(), alone).u
    (expected,) = torch.autograd.grad(u.sum(), alone.g)
    torch.testing.assert_close(d_g, expected, atol=1e-10, rtol=1e-10)


# ---- 4. a constraint row that reads another time step ---------------------------------------


class VelocityChange(nn.Module):
    """|v_t - v_{t-lag}| <= limit: row t reads step t - lag (forbidden)."""

    def __init__(self, limit: float, lag: int = 1) -> None:
        super().__init__()
        self.limit, self.lag = limit, lag

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        velocity = x[..., 2:3]
        before = torch.cat([velocity[:, : self.lag], velocity[:, : -self.lag]], dim=1)
        change = velocity - before
        return torch.cat([change - self.limit, -change - self.limit], dim=-1)


@pytest.mark.parametrize("lag", [1, 4])
def test_a_constraint_row_reading_another_step_is_an_error_naming_the_module(lag: int) -> None:
    mpc = MPC(3, 1, 8, -2.0, 2.0, constraints=VelocityChange(0.3, lag))
    x_init = start_states(2, seed=0)
    message = r"constraints \(VelocityChange\): a row of step t reads x or u of another step"
    with pytest.raises(ValueError, match=message):
        mpc(x_init, pendulum_cost(), PendulumDynamics())
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        mpc(x_init, pendulum_cost(), PendulumDynamics())


# ---- 7. an empty batch with constraints; torch.func transforms ------------------------------


def test_an_empty_batch_with_constraints_solves_to_empty_answers() -> None:
    mpc = MPC(3, 1, 5, -2.0, 2.0, constraints=VelocityLimit(0.5))
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            solution = mpc(start_states(2, seed=0)[:0], pendulum_cost(), PendulumDynamics())
        assert solution.u.shape == (0, 5, 1) and solution.x.shape == (0, 5, 3)
        assert solution.cost.shape == (0,)
        report = solution.constraints
        assert report is not None and report.values.shape == (0, 5, 2)


def _mpc_u(x: Tensor) -> Tensor:
    return MPC(3, 1, 5, -2.0, 2.0)(x, pendulum_cost(), PendulumDynamics()).u


def _lqr_u(x: Tensor) -> Tensor:
    data = _lqr_data()
    del data["x_init"]
    return lqr_solve(x, **data, u_lower=-1.0, u_upper=1.0).u


@pytest.mark.parametrize(
    ("transform", "solve", "x", "named"),
    [
        (torch.func.vmap, lambda x: _mpc_u(x.unsqueeze(0)), "pendulum", "torch.func.vmap"),
        (torch.func.jacrev, _mpc_u, "pendulum", "a torch.func transform"),
        (torch.func.jacfwd, _mpc_u, "pendulum", "a torch.func transform"),
        (torch.func.jacrev, _lqr_u, "lqr", "a torch.func transform"),
    ],
)
def test_torch_func_transforms_are_refused_by_name(transform, solve, x, named: str) -> None:
    x_init = start_states(2, seed=0) if x == "pendulum" else _lqr_data()["x_init"]
    with pytest.raises(TypeError, match=rf"x_init: received a tensor of {named}"):
        transform(solve)(x_init)


class Planner(nn.Module):
    """A module that plans with its own dynamics (as ``MPCPolicy`` does)."""

    def __init__(self) -> None:
        super().__init__()
        self.dynamics = PendulumDynamics()

    def forward(self, x_init: Tensor) -> Tensor:
        # the cost is made here, inside the transform: its tensors are the transform's too
        return MPC(3, 1, 5, -2.0, 2.0)(x_init, pendulum_cost(), self.dynamics).u


def test_grad_over_a_modules_parameters_by_functional_call_is_refused_by_name() -> None:
    planner, x_init = Planner(), start_states(2, seed=0)
    params = {k: v.detach() for k, v in planner.named_parameters()}

    def loss(parameters: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(planner, parameters, (x_init,)).sum()

    message = r"\(PendulumDynamics\): its tensor 'g' is a tensor of a torch.func transform"
    with pytest.raises(TypeError, match=message):
        torch.func.grad(loss)(params)


# ---- 8. per-element parameters (one mass per environment) -----------------------------------


class RandomizedPendulum(PendulumDynamics):
    """The pendulum with one mass per batch element: ``m`` has shape (B,), read as the
    guide says, broadcast against x[..., i] (domain randomization)."""

    def __init__(self, masses: Tensor) -> None:
        super().__init__()
        self.m = nn.Parameter(masses.clone())


@pytest.mark.parametrize("jacobian", ["autograd", "analytic"])
def test_a_dynamics_parameter_with_the_batch_dimension_broadcasts(jacobian: str) -> None:
    masses = torch.tensor([0.7, 1.0, 1.4], dtype=F64)
    x_init = start_states(3, seed=5)
    dynamics = RandomizedPendulum(masses)
    mpc = MPC(3, 1, 10, -2.0, 2.0, tol=1e-10, jacobian=jacobian)
    solution = mpc(x_init, pendulum_cost(), dynamics)
    assert bool(solution.info.converged.all())
    (d_masses,) = torch.autograd.grad(solution.u.sum(), dynamics.m)
    for b in range(3):
        alone = PendulumDynamics(m=float(masses[b]))
        reference = MPC(3, 1, 10, -2.0, 2.0, tol=1e-10)(x_init[b : b + 1], pendulum_cost(), alone)
        (d_mass,) = torch.autograd.grad(reference.u.sum(), alone.m)
        torch.testing.assert_close(solution.u[b], reference.u[0], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(d_masses[b], d_mass, atol=1e-7, rtol=1e-6)


# ---- 9. NaN from the constraints; dynamics that are not deterministic -----------------------


class NaNVelocityLimit(VelocityLimit):
    """A velocity limit whose rows turn NaN once |velocity| exceeds 5."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        out = super().forward(x, u)
        return torch.where(x[..., 2:3].abs() > 5, torch.full_like(out, float("nan")), out)


def test_nan_from_the_constraints_is_blamed_on_the_constraints() -> None:
    x_init = start_states(3, seed=12)
    x_init[1, 2] = 9.0  # element 1 starts where the constraints are NaN
    mpc = MPC(3, 1, 8, -2.0, 2.0, constraints=NaNVelocityLimit(20.0))
    message = r"NONFINITE at indices \[1\] \(from the constraints at \[1\]\)"
    with pytest.warns(RuntimeWarning, match=message):
        solution = mpc(x_init, pendulum_cost(), PendulumDynamics())
    assert solution.info.status_names[1] == "NONFINITE"


class NoisyPendulum(PendulumDynamics):
    """The pendulum with fresh noise on every call (no fixed point to find)."""

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return super().forward(x, u) + 1e-3 * torch.randn_like(x)


def test_a_noisy_dynamics_module_is_named_in_the_non_convergence_warning() -> None:
    torch.manual_seed(0)
    mpc = MPC(3, 1, 8, -2.0, 2.0, max_iter=5)
    with pytest.warns(RuntimeWarning) as caught:
        mpc(start_states(3, seed=0), pendulum_cost(), NoisyPendulum())
    text = str(caught[0].message)
    assert "dynamics (NoisyPendulum) gave different values on two calls" in text
    assert "draws noise on every call" in text
    # a deterministic module stopped at max_iter gets no such sentence
    with pytest.warns(RuntimeWarning) as caught:
        MPC(3, 1, 8, -2.0, 2.0, max_iter=1)(
            start_states(3, seed=0), pendulum_cost(), PendulumDynamics()
        )
    assert "draws noise" not in str(caught[0].message)


# ---- 11. the compat layer: ambiguous bounds, backprop=False ---------------------------------


def _compat_lqr_problem(B: int, T: int) -> tuple[Tensor, QuadCost, LinDx]:
    n, m = 2, 1
    generator = torch.Generator().manual_seed(1)
    C = torch.eye(n + m, dtype=F64).expand(T, B, n + m, n + m)
    c = torch.randn(T, B, n + m, generator=generator, dtype=F64)
    F = 0.5 * torch.randn(T, B, n, n + m, generator=generator, dtype=F64)
    x_init = torch.randn(B, n, generator=generator, dtype=F64)
    return x_init, QuadCost(C, c), LinDx(F)


def test_compat_refuses_a_2d_bound_when_b_equals_t_as_the_native_api_does() -> None:
    x_init, cost, dx = _compat_lqr_problem(3, 3)
    bound = torch.full((3, 1), 0.5, dtype=F64)
    message = r"u_lower: shape \(3, 1\) is ambiguous with B = T = 3: \[T, m\]"
    with pytest.raises(ValueError, match=message):
        compat_mpc.MPC(2, 1, 3, -bound, bound, lqr_iter=20)(x_init, cost, dx)
    with pytest.raises(ValueError, match=r"u_lower: shape \(3, 1\) is ambiguous with B = T = 3"):
        MPC(3, 1, 3, -bound, bound)(start_states(3, seed=0), pendulum_cost(), PendulumDynamics())
    # the forms that say what they mean still work: per step [T, 1, m], per element [T, B, m]
    for lower in (-bound.view(3, 1, 1), -bound.view(1, 3, 1).expand(3, 3, 1)):
        compat_mpc.MPC(2, 1, 3, lower, -lower, lqr_iter=20)(x_init, cost, dx)


def test_compat_backprop_false_keeps_learning_as_upstream_does_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compat_mpc, "_BACKPROP_WARNED", False)
    x_init, cost, dx = _compat_lqr_problem(2, 4)
    x_init.requires_grad_(True)
    with pytest.warns(UserWarning, match="backprop=False: mpc.pytorch never read it") as caught:
        controller = compat_mpc.MPC(2, 1, 4, -0.5, 0.5, lqr_iter=20, backprop=False)
        compat_mpc.MPC(2, 1, 4, -0.5, 0.5, lqr_iter=20, backprop=False)
    assert len([w for w in caught if "backprop" in str(w.message)]) == 1
    _, u, _ = controller(x_init, cost, dx)
    assert u.requires_grad
    (grad,) = torch.autograd.grad(u.sum(), x_init)
    assert bool((grad != 0).any())
