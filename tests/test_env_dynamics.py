"""Dynamics modules of envs/: shapes, dtypes, Jacobians (analytic vs autograd vs finite
differences, for states and parameters), the velocity clip, parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from mpc_policy import MPC
from mpc_policy.costs import GoalWeightedCost
from mpc_policy.envs import (
    CartPoleDynamics,
    CartPoleParams,
    PendulumDynamics,
    PendulumEnv,
    PendulumParams,
    SystemDynamics,
    WindyPendulumDynamics,
    WindyPendulumParams,
    cartpole_cost,
    cartpole_state,
    pendulum_cost,
    pendulum_state,
)

SYSTEMS = {
    "pendulum": lambda: PendulumDynamics(),
    "pendulum_unclipped": lambda: PendulumDynamics(PendulumParams(max_speed=None)),
    "windy_pendulum": lambda: WindyPendulumDynamics(),
    "cartpole": lambda: CartPoleDynamics(),
}


def random_states(n_state: int, batch: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """States on the unit circle with moderate velocities (inside the velocity clip)."""
    theta = (torch.rand(batch, dtype=dtype) * 2 - 1) * math.pi
    velocity = torch.randn(batch, dtype=dtype)
    angle = [theta.cos(), theta.sin(), velocity]
    if n_state == 3:
        return torch.stack(angle, -1)
    return torch.stack(
        [torch.randn(batch, dtype=dtype), torch.randn(batch, dtype=dtype), *angle], -1
    )


def random_controls(dynamics: torch.nn.Module, batch: tuple[int, ...], dtype: torch.dtype):
    scale = 2.0 if dynamics.n_state == 3 else 20.0
    return scale * torch.randn(*batch, 1, dtype=dtype)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_forward_batched_any_leading_shape(system, dtype, batch):
    dynamics = SYSTEMS[system]().to(dtype)
    x = random_states(dynamics.n_state, batch, dtype)
    u = random_controls(dynamics, batch, dtype)
    x_next = dynamics(x, u)
    assert x_next.shape == (*batch, dynamics.n_state)
    assert x_next.dtype == dtype
    flat = dynamics(x.reshape(-1, dynamics.n_state), u.reshape(-1, 1))
    torch.testing.assert_close(x_next.reshape(-1, dynamics.n_state), flat, rtol=0, atol=0)
    jacobian = dynamics.jacobian(x, u)
    assert jacobian.shape == (*batch, dynamics.n_state, dynamics.n_state + 1)
    assert jacobian.dtype == dtype


@pytest.mark.parametrize("system", SYSTEMS)
def test_float32_parameters_with_float64_inputs(system):
    """Parameters are cast to the input's dtype, so a float32 module accepts float64 input."""
    dynamics = SYSTEMS[system]()
    x = random_states(dynamics.n_state, (5,), torch.float64)
    u = random_controls(dynamics, (5,), torch.float64)
    assert dynamics(x, u).dtype == torch.float64
    torch.testing.assert_close(
        dynamics(x.float(), u.float()), dynamics(x, u).float(), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("system", SYSTEMS)
def test_analytic_jacobian_matches_autograd_and_finite_differences(system):
    dynamics = SYSTEMS[system]().double()
    x = random_states(dynamics.n_state, (16,), torch.float64)
    u = random_controls(dynamics, (16,), torch.float64)
    analytic = dynamics.jacobian(x, u)
    j_x, j_u = vmap(jacrev(dynamics, argnums=(0, 1)))(x, u)
    torch.testing.assert_close(analytic, torch.cat([j_x, j_u], -1), rtol=1e-10, atol=1e-12)
    tau = torch.cat([x, u], -1)
    eps = 1e-6
    columns = []
    for i in range(tau.shape[-1]):
        step = torch.zeros_like(tau)
        step[:, i] = eps
        plus, minus = tau + step, tau - step
        n = dynamics.n_state
        columns.append(
            (dynamics(plus[:, :n], plus[:, n:]) - dynamics(minus[:, :n], minus[:, n:])) / (2 * eps)
        )
    torch.testing.assert_close(analytic, torch.stack(columns, -1).detach(), rtol=1e-6, atol=1e-7)


class _JacobianOf(torch.nn.Module):
    """Calls a dynamics module's analytic ``jacobian`` as ``forward`` (for functional_call)."""

    def __init__(self, dynamics: torch.nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.dynamics.jacobian(x, u)


def _as_function_of_parameters(module: torch.nn.Module):
    """(names, values, f) with f(x, u, *values) = module(x, u) at those parameter values."""
    named = dict(module.named_parameters())
    names = list(named)

    def call(x, u, *values):
        return functional_call(module, dict(zip(names, values)), (x, u), strict=True)

    values = tuple(v.detach().clone().requires_grad_(True) for v in named.values())
    return names, values, call


@pytest.mark.parametrize("system", SYSTEMS)
def test_gradcheck_states_controls_and_parameters(system):
    dynamics = SYSTEMS[system]().double()
    x = random_states(dynamics.n_state, (3,), torch.float64).requires_grad_(True)
    u = random_controls(dynamics, (3,), torch.float64).requires_grad_(True)
    _, values, call = _as_function_of_parameters(dynamics)
    assert torch.autograd.gradcheck(call, (x, u, *values), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("system", SYSTEMS)
def test_analytic_jacobian_parameter_gradients_match_autograd(system):
    """The MPC's exact gradients need d(Jacobian)/d(parameters): the analytic Jacobian must
    carry them, equal to those of the autograd Jacobian and to finite differences."""
    dynamics = SYSTEMS[system]().double()
    x = random_states(dynamics.n_state, (3,), torch.float64).requires_grad_(True)
    u = random_controls(dynamics, (3,), torch.float64).requires_grad_(True)
    _, values, analytic = _as_function_of_parameters(_JacobianOf(dynamics))
    assert torch.autograd.gradcheck(analytic, (x, u, *values), eps=1e-6, atol=1e-5, rtol=1e-4)

    _, _, forward = _as_function_of_parameters(dynamics)

    def autograd_jacobian(*values):
        j_x, j_u = vmap(jacrev(forward, argnums=(0, 1)), in_dims=(0, 0) + (None,) * len(values))(
            x, u, *values
        )
        return torch.cat([j_x, j_u], -1)

    weights = torch.randn_like(dynamics.jacobian(x, u))
    grads_analytic = torch.autograd.grad((analytic(x, u, *values) * weights).sum(), values)
    grads_autograd = torch.autograd.grad((autograd_jacobian(*values) * weights).sum(), values)
    for a, b in zip(grads_analytic, grads_autograd):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_parameters_are_learnable():
    expected = {
        "pendulum": {"gravity", "mass", "length"},
        "windy_pendulum": {"gravity", "mass", "length", "damping", "wind"},
        "cartpole": {"gravity", "cart_mass", "pole_mass", "half_length"},
    }
    for system, names in expected.items():
        dynamics = SYSTEMS[system]()
        assert {n for n, p in dynamics.named_parameters() if p.requires_grad} == names
    params = CartPoleParams()
    dynamics = CartPoleDynamics(params, dtype=torch.float64)
    assert dynamics.pole_mass.item() == params.pole_mass
    assert dynamics.half_length.item() == params.half_length


def test_velocity_clip_matches_gymnasium_and_zeroes_its_jacobian_row():
    dynamics = PendulumDynamics().double()
    x = torch.tensor([[1.0, 0.0, 7.9], [0.0, 1.0, 7.99], [1.0, 0.0, -7.9]], dtype=torch.float64)
    u = torch.tensor([[2.0], [2.0], [-2.0]], dtype=torch.float64)
    x_next = dynamics(x, u)
    torch.testing.assert_close(x_next[:, 2], torch.tensor([8.0, 8.0, -8.0]).double())
    jacobian = dynamics.jacobian(x, u)
    torch.testing.assert_close(jacobian[:, 2], torch.zeros(3, 4).double(), rtol=0, atol=0)
    j_x, j_u = vmap(jacrev(dynamics, argnums=(0, 1)))(x, u)
    torch.testing.assert_close(jacobian, torch.cat([j_x, j_u], -1), rtol=1e-10, atol=1e-12)
    # the torque's only effect left is none at all: th' = th + 8 dt whatever u is
    torch.testing.assert_close(jacobian[..., 3], torch.zeros(3, 3).double(), rtol=0, atol=0)


def test_windy_pendulum_reduces_to_pendulum_without_damping_and_wind():
    windy = WindyPendulumDynamics(WindyPendulumParams(damping=0.0, wind=0.0)).double()
    simple = PendulumDynamics().double()
    x = random_states(3, (32,), torch.float64)
    u = random_controls(simple, (32,), torch.float64)
    torch.testing.assert_close(windy(x, u), simple(x, u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(windy.jacobian(x, u), simple.jacobian(x, u), rtol=1e-12, atol=1e-12)


def test_windy_pendulum_is_outside_the_simple_pendulum_model_class():
    """The simple pendulum's acceleration is a sin th + b u for some (a, b) (a = 3g/(2l),
    b = 3/(m l^2)); the least-squares best such fit to the windy pendulum leaves a large
    residual, while the windy model itself fits exactly."""
    windy = WindyPendulumDynamics(WindyPendulumParams(max_speed=None)).double()
    theta = (torch.rand(4000, dtype=torch.float64) * 2 - 1) * math.pi
    theta_dot = 4 * torch.rand(4000, dtype=torch.float64) - 2
    u = 4 * torch.rand(4000, 1, dtype=torch.float64) - 2
    x = torch.stack([theta.cos(), theta.sin(), theta_dot], -1)
    with torch.no_grad():
        acceleration = (windy(x, u)[:, 2] - theta_dot) / windy.dt
    features = torch.stack([theta.sin(), u[:, 0]], -1)
    fit = torch.linalg.lstsq(features, acceleration[:, None]).solution[:, 0]
    residual = acceleration - features @ fit
    relative = residual.pow(2).mean().sqrt() / acceleration.pow(2).mean().sqrt()
    assert relative > 0.15, f"best simple-pendulum fit explains too much: {relative:.3f}"
    # holding upright at rest needs a torque of F_w l = 1 N m, where the fit predicts ~0
    upright = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        windy(upright, torch.tensor([[WindyPendulumParams().wind]]).double()),
        upright,
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (PendulumParams, "mass", -1.0),
        (PendulumParams, "length", 0.0),
        (PendulumParams, "gravity", -9.8),
        (PendulumParams, "dt", float("nan")),
        (PendulumParams, "max_speed", -8.0),
        (PendulumParams, "max_torque", float("inf")),
        (WindyPendulumParams, "damping", -0.1),
        (WindyPendulumParams, "wind", float("nan")),
        (CartPoleParams, "cart_mass", -1.0),
        (CartPoleParams, "pole_mass", 0.0),
        (CartPoleParams, "half_length", -0.5),
        (CartPoleParams, "max_force", 0.0),
    ],
)
def test_out_of_range_parameters_raise_value_error_naming_them(make, field, value):
    with pytest.raises(ValueError, match=field):
        make(**{field: value})


def test_non_numeric_parameter_raises_type_error():
    with pytest.raises(TypeError, match="mass"):
        PendulumParams(mass="1.0")
    with pytest.raises(TypeError, match="params"):
        PendulumDynamics(CartPoleParams())
    with pytest.raises(TypeError, match="params"):
        WindyPendulumDynamics(PendulumParams())


@pytest.mark.parametrize("system", ["pendulum", "cartpole"])
def test_bad_inputs_raise_clear_errors(system):
    dynamics = SYSTEMS[system]()
    n = dynamics.n_state
    with pytest.raises(ValueError, match=rf"x of shape \(\.\.\., {n}\)"):
        dynamics(torch.zeros(4, n + 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"u of shape"):
        dynamics(torch.zeros(4, n), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        dynamics(torch.zeros(4, n), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="floating point"):
        dynamics(torch.zeros(4, n, dtype=torch.long), torch.zeros(4, 1))
    with pytest.raises(TypeError, match="share a dtype"):
        dynamics(torch.zeros(4, n), torch.zeros(4, 1, dtype=torch.float64))


@pytest.mark.parametrize("system", ["pendulum", "windy_pendulum", "cartpole"])
def test_mpc_gradients_reach_the_physical_parameters(system):
    """Through mpc_policy.MPC, the analytic Jacobian gives the same (nonzero) gradients with
    respect to the physical parameters as autograd linearization."""
    dynamics = {
        "pendulum": PendulumDynamics,
        "windy_pendulum": WindyPendulumDynamics,
        "cartpole": CartPoleDynamics,
    }[system](dtype=torch.float64)
    if system == "cartpole":
        cost, bound = cartpole_cost(dtype=torch.float64), 100.0
        x = torch.tensor(cartpole_state(0.1, 0.0, 0.7, 0.2))[None]
    else:
        cost, bound = pendulum_cost(dtype=torch.float64), 2.0
        x = torch.tensor(pendulum_state(0.1, 0.2))[None]
    weights = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)[None, :, None]
    grads = {}
    for method in ("analytic", "autograd"):
        dynamics.zero_grad()
        solution = MPC(dynamics.n_state, 1, 10, -bound, bound, jacobian=method)(x, cost, dynamics)
        assert solution.info.all_converged
        (solution.u * weights).sum().backward()
        grads[method] = torch.stack([p.grad for p in dynamics.parameters()])
    assert grads["analytic"].abs().max() > 1e-3
    torch.testing.assert_close(grads["analytic"], grads["autograd"], rtol=1e-6, atol=1e-8)


def test_dynamics_accept_params_as_a_mapping():
    for cls, params_cls, overrides in (
        (PendulumDynamics, PendulumParams, {"mass": 1.5}),
        (WindyPendulumDynamics, WindyPendulumParams, {"damping": 0.3}),
        (CartPoleDynamics, CartPoleParams, {"cart_mass": 2.0, "dt": 0.02}),
    ):
        dynamics = cls(overrides, dtype=torch.float64)
        assert dynamics.params == params_cls(**overrides)
        with pytest.raises(ValueError, match=r"params: unknown key 'weight'.*valid keys"):
            cls({"weight": 1.0})


class _PointWithoutJacobian(SystemDynamics):
    """A user's model that writes only forward: x' = (p + dt v', v'), v' = v + dt u / m."""

    n_state, n_ctrl = 2, 1

    def __init__(self) -> None:
        super().__init__()
        self.dt = 0.1
        self.mass = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x, u):
        v = x[..., 1:] + self.dt * u / self.mass
        return torch.cat([x[..., :1] + self.dt * v, v], dim=-1)


def test_the_jacobian_is_optional_and_defaults_to_autograd():
    """A SystemDynamics with only forward instantiates (no "abstract class ... jacobian"),
    and its default Jacobian equals the exact one, carries parameter gradients under grad
    mode, is detached under no_grad, and serves MPC(jacobian="analytic")."""
    point = _PointWithoutJacobian()
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    u = torch.randn(4, 3, 1, dtype=torch.float64)
    dt, m = 0.1, point.mass
    exact = torch.tensor([[1.0, dt, dt * dt / 2.0], [0.0, 1.0, dt / 2.0]], dtype=torch.float64)
    jacobian = point.jacobian(x, u)
    torch.testing.assert_close(jacobian, exact.expand(4, 3, 2, 3), rtol=1e-12, atol=1e-14)
    (d_mass,) = torch.autograd.grad(jacobian[..., 0, 2].sum(), m)
    assert d_mass.item() == pytest.approx(12 * -dt * dt / 4.0, rel=1e-12)  # d(dt^2/m)/dm
    with torch.no_grad():
        assert not point.jacobian(x, u).requires_grad
    torch.testing.assert_close(point.jacobian(x[0, 0], u[:, :1]), jacobian[:, :1], rtol=0, atol=0)
    # the built-in systems' analytic Jacobians agree with the default, parameter gradients too
    for system in SYSTEMS:
        dynamics = SYSTEMS[system]().double()
        xs = random_states(dynamics.n_state, (5,), torch.float64).requires_grad_(True)
        us = random_controls(dynamics, (5,), torch.float64)
        default = SystemDynamics.jacobian(dynamics, xs, us)
        torch.testing.assert_close(default, dynamics.jacobian(xs, us), rtol=1e-10, atol=1e-12)
        weights = torch.randn_like(default)
        grads = [
            torch.autograd.grad((j * weights).sum(), [xs, *dynamics.parameters()])
            for j in (default, dynamics.jacobian(xs, us))
        ]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    cost = GoalWeightedCost(torch.tensor([1.0, 0.1, 0.01]).double(), torch.zeros(3).double())
    x_init = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    solution = MPC(2, 1, 10, -1.0, 1.0, jacobian="analytic")(x_init, cost, point)
    assert solution.info.all_converged
    solution.u.sum().backward()
    assert point.mass.grad is not None and point.mass.grad.abs() > 0


@pytest.mark.parametrize("system", SYSTEMS)
def test_numpy_twin_equals_the_torch_module(system):
    """The environments step with ``numpy_step``: equal to ``forward`` to float precision on
    any leading shape, inside and outside the velocity clip, at the module's current
    parameter values (after an in-place update and after load_state_dict)."""
    dynamics = SYSTEMS[system]().double()
    twin = dynamics.numpy_twin()
    assert twin is not None
    for batch in [(), (7,), (2, 3)]:
        x = random_states(dynamics.n_state, batch, torch.float64)
        x[..., -1] *= 4.0  # velocities up to ~12: the pendulum's clip at 8 is active at times
        u = random_controls(dynamics, batch, torch.float64)
        with torch.no_grad():
            expected = dynamics(x, u).numpy()
        np.testing.assert_allclose(twin(x.numpy(), u.numpy()), expected, rtol=1e-13, atol=1e-14)
    x = random_states(dynamics.n_state, (16,), torch.float64)
    u = random_controls(dynamics, (16,), torch.float64)
    before = twin(x.numpy(), u.numpy())
    with torch.no_grad():
        for parameter in dynamics.parameters():
            parameter.mul_(1.3)  # in place, as an optimizer step is
        expected = dynamics(x, u).numpy()
    after = twin(x.numpy(), u.numpy())
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, expected, rtol=1e-13, atol=1e-14)
    fresh = SYSTEMS[system]().double()
    dynamics.load_state_dict(fresh.state_dict())
    np.testing.assert_allclose(twin(x.numpy(), u.numpy()), before, rtol=0, atol=0)


def test_a_subclass_that_changes_forward_steps_in_torch():
    """A subclass inherits numpy_step but not the promise that it equals its forward."""

    class Heavier(PendulumDynamics):
        def forward(self, x, u):
            return super().forward(x, 0.5 * u)

    assert PendulumDynamics().numpy_twin() is not None
    assert Heavier().numpy_twin() is None
    env = PendulumEnv()
    env.dynamics = Heavier(dtype=torch.float64)  # e.g. domain randomization
    env.reset(seed=0)
    x = torch.tensor(env.state)
    env.step(np.array([2.0], dtype=np.float32))
    with torch.no_grad():
        expected = PendulumDynamics(dtype=torch.float64)(x, torch.tensor([1.0]).double())
    np.testing.assert_allclose(env.state, expected.numpy(), rtol=1e-14, atol=1e-14)
