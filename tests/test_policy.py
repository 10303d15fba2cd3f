"""MPCPolicy: batch independence, no_grad, float32 observations, warm starts, obs_to_state,
gradients to the model's parameters, and argument checks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mpc_policy.envs import PendulumDynamics, pendulum_cost, pendulum_state
from mpc_policy.envs.params import PendulumParams
from mpc_policy.mpc import MPC
from mpc_policy.policy import MPCPolicy

ANGLES = [(0.4, 0.0), (-1.2, 0.7), (1.5, -0.9), (0.05, 0.3), (-0.6, -0.2), (1.0, 1.0)]


def make_policy(**kwargs) -> MPCPolicy:
    dynamics = PendulumDynamics(
        PendulumParams(gravity=12.0, mass=1.5, length=0.9), dtype=torch.float64
    )
    cost = pendulum_cost(dtype=torch.float64)
    options = {"jacobian": "analytic", "on_unconverged": "raise", **kwargs}
    return MPCPolicy(dynamics, cost, 10, u_lower=-2.0, u_upper=2.0, **options)


@pytest.fixture(scope="module")
def states() -> torch.Tensor:
    return torch.tensor(np.stack([pendulum_state(th, thd) for th, thd in ANGLES]))


def test_one_observation_alone_equals_it_in_a_batch(states):
    policy = make_policy()
    batch = policy.plan(states)
    for i in range(states.shape[0]):
        alone = policy.plan(states[i : i + 1])
        torch.testing.assert_close(alone.u, batch.u[i : i + 1], rtol=0, atol=1e-9)
        torch.testing.assert_close(alone.x, batch.x[i : i + 1], rtol=0, atol=1e-9)
    assert batch.u.shape == (6, 10, 1) and batch.u.abs().max() <= 2.0 + 1e-12


def test_forward_is_the_first_control_and_last_info_is_kept(states):
    policy = make_policy()
    assert policy.last_info is None
    u = policy(states)
    assert u.shape == (6, 1)
    plan = policy.plan(states)
    torch.testing.assert_close(u, plan.u[:, 0], rtol=0, atol=1e-12)
    assert policy.last_info is plan.info
    assert policy.last_info.iterations.shape == (6,) and policy.last_info.all_converged


def test_no_grad_gives_the_same_answer_without_a_graph(states):
    policy = make_policy()
    with_grad = policy(states)
    with torch.no_grad():
        without = policy(states)
    assert without.grad_fn is None and with_grad.grad_fn is not None
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=1e-12)


# near upright: first controls strictly inside the bounds [-2, 2] (those of ANGLES all sit on
# a bound, where a float32 solve and a float64 solve agree exactly)
INTERIOR_ANGLES = [(0.02, 0.0), (-0.03, 0.05), (0.01, -0.1), (0.1, -0.6), (-0.05, 0.2)]


@pytest.mark.parametrize("angles", [ANGLES, INTERIOR_ANGLES], ids=["on_bounds", "interior"])
def test_float32_observations_solved_in_float64_return_float32(angles):
    states = torch.tensor(np.stack([pendulum_state(th, thd) for th, thd in angles]))
    policy64 = make_policy(solve_dtype=torch.float64)
    obs32 = states.float()
    u = policy64(obs32)
    assert u.dtype == torch.float32
    plan = policy64.plan(obs32)
    assert plan.x.dtype == plan.u.dtype == plan.cost.dtype == torch.float32
    reference = make_policy().plan(obs32.double()).u[:, 0]
    if angles is INTERIOR_ANGLES:
        assert bool((reference.abs() < 1.9).all()), reference
    # a float32 solve differs by up to 5e-5 in the interior: the solve ran in float64
    torch.testing.assert_close(u, reference.float(), rtol=0, atol=1e-6)


def test_float32_solve_runs_in_float32(states):
    policy = make_policy(on_unconverged="ignore")
    with torch.no_grad():
        plan = policy.plan(states.float())
    assert plan.u.dtype == torch.float32
    reference = make_policy().plan(states).u
    # float32 tolerance (1e-4 by default) on the fixed point
    torch.testing.assert_close(plan.u.double(), reference, rtol=0, atol=2e-2)


def test_warm_start_per_call_reaches_the_same_plan_faster(states):
    policy = make_policy()
    cold = policy.plan(states)
    warm = policy.plan(states, u_init=cold.u.detach())
    torch.testing.assert_close(warm.u, cold.u, rtol=0, atol=1e-7)
    assert bool((warm.info.iterations <= 2).all())
    assert bool((cold.info.iterations > 2).any())


def test_obs_to_state_maps_observations_to_states(states):
    def angle_to_state(obs: torch.Tensor) -> torch.Tensor:
        theta, theta_dot = obs.unbind(-1)
        return torch.stack([theta.cos(), theta.sin(), theta_dot], dim=-1)

    policy = make_policy()
    angled = make_policy(obs_to_state=angle_to_state)
    obs = torch.tensor(ANGLES, dtype=torch.float64)
    torch.testing.assert_close(angled(obs), policy(states), rtol=0, atol=1e-9)


def test_single_observation_and_numpy_input(states):
    policy = make_policy()
    u = policy(states[0].numpy())
    assert u.shape == (1, 1)
    torch.testing.assert_close(u, policy(states[:1]), rtol=0, atol=1e-12)


def test_gradients_reach_the_dynamics_and_cost_parameters(states):
    policy = make_policy()
    policy.plan(states).u.pow(2).sum().backward()
    for name, parameter in policy.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
    assert abs(float(policy.dynamics.gravity.grad)) > 0


def test_tensor_bounds_are_buffers_cast_to_the_solve_dtype(states):
    dynamics = PendulumDynamics(dtype=torch.float64)
    bound = torch.tensor([1.0], dtype=torch.float32)
    policy = MPCPolicy(dynamics, pendulum_cost(dtype=torch.float64), 8, -bound, bound)
    assert "u_lower" in dict(policy.named_buffers())
    plan = policy.plan(states)
    assert plan.u.abs().max() <= 1.0 + 1e-12


def test_argument_errors_name_the_argument(states):
    dynamics, cost = PendulumDynamics(), pendulum_cost()
    with pytest.raises(ValueError, match="horizon"):
        MPCPolicy(dynamics, cost, 0)
    with pytest.raises(TypeError, match="dynamics"):
        MPCPolicy(lambda x, u: x, cost, 5)
    with pytest.raises(TypeError, match="unknown solver option"):
        MPCPolicy(dynamics, cost, 5, max_iters=3)
    with pytest.raises(ValueError, match="solve_dtype"):
        MPCPolicy(dynamics, cost, 5, solve_dtype=torch.int64)
    with pytest.raises(TypeError, match="obs"):
        MPCPolicy(dynamics, cost, 5)(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="obs"):
        MPCPolicy(dynamics, cost, 5)(torch.zeros(2, 3, 1))


def test_control_size_must_be_known():
    class Bare(torch.nn.Module):
        def forward(self, x, u):
            return x + u

    policy = MPCPolicy(Bare(), pendulum_cost(), 4)
    with pytest.raises(ValueError, match="n_ctrl"):
        policy(torch.zeros(2, 3))
    with torch.no_grad():
        plan = policy.plan(torch.zeros(2, 3), u_init=torch.zeros(2, 4, 1))
    assert plan.u.shape == (2, 4, 1) and math.isfinite(float(plan.cost[0]))


def test_warm_start_cache_starts_from_the_shifted_plan(states):
    cached = make_policy(warm_start=True)
    first = cached.plan(states)
    shifted = torch.cat([first.u[:, 1:], first.u[:, -1:]], dim=1)
    second = cached.plan(states)  # no u_init: the cached, shifted plan
    explicit = make_policy().plan(states, u_init=shifted)
    torch.testing.assert_close(second.u, explicit.u, rtol=0, atol=1e-12)
    assert torch.equal(cached.last_info.iterations, explicit.info.iterations)
    # one iteration from the cache and one from zeros land far apart: the cache was used
    short = {"max_iter": 1, "on_unconverged": "ignore"}
    cached_short = make_policy(warm_start=True, **short)
    cached_short.plan(states)
    warm = cached_short.plan(states)
    cold = make_policy(**short).plan(states)
    assert float((warm.u - cold.u).detach().abs().max()) > 1e-3


def test_episode_start_rows_start_cold(states):
    cached = make_policy(warm_start=True)
    first = cached.plan(states)
    restart = torch.tensor([True, False, False, True, False, False])
    shifted = torch.cat([first.u[:, 1:], first.u[:, -1:]], dim=1)
    shifted[restart] = 0.0
    second = cached.plan(states, episode_start=restart)
    explicit = make_policy().plan(states, u_init=shifted)
    torch.testing.assert_close(second.u, explicit.u, rtol=0, atol=1e-12)


def test_warm_start_cache_is_dropped_on_a_new_batch_size_and_on_reset(states):
    cached = make_policy(warm_start=True)
    cached.plan(states)
    cold = make_policy().plan(states[:2])
    torch.testing.assert_close(cached.plan(states[:2]).u, cold.u, rtol=0, atol=1e-12)
    cached.reset_warm_start()
    torch.testing.assert_close(cached.plan(states[:2]).u, cold.u, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"rows: expected a bool mask of shape \(2,\)"):
        cached.reset_warm_start(np.ones(3, dtype=bool))
    with pytest.raises(TypeError, match="warm_start: expected a bool"):
        make_policy(warm_start="yes")


def test_a_non_convergence_warning_points_at_the_users_call_and_fits_the_situation(states):
    policy = make_policy(max_iter=1, on_unconverged="zero_grad")
    with pytest.warns(RuntimeWarning, match="did not reach a fixed point") as caught:
        policy(states)  # differentiable: the unconverged rows pass no gradient
    (warning,) = caught
    assert warning.filename == __file__  # this line, not torch's module.py
    assert "their gradients are zeroed" in str(warning.message)
    with pytest.warns(RuntimeWarning, match="did not reach a fixed point") as caught:
        with torch.no_grad():  # acting: no gradient to zero, none mentioned
            policy(states)
    assert caught[0].filename == __file__
    assert "gradient" not in str(caught[0].message)


class _ScaledObservationPolicy(torch.nn.Module):
    """A model around the policy: learned observation scales, then the MPC's first control."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.0, 1.0, 0.9], dtype=torch.float64))
        self.policy = make_policy()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs * self.scale).pow(2).sum()


def _compiled_matches_eager(backend: str) -> None:
    torch.manual_seed(0)
    obs = torch.tensor(np.stack([pendulum_state(th, thd) for th, thd in INTERIOR_ANGLES]))
    model = _ScaledObservationPolicy()
    eager = model(obs)
    eager.backward()
    expected = model.scale.grad.clone()
    model.zero_grad()
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend)(obs)
        compiled.backward()
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.scale.grad, expected, rtol=0, atol=1e-12)
    assert float(expected.abs().max()) > 0


def test_a_model_around_the_policy_compiles_forward_and_backward():
    """The solve is a compile boundary (torch.compiler.disable on MPC.forward): the model
    around it is compiled, the solve runs eagerly, and the backward (which traced through
    the solver failed: "does not currently support double backward") equals eager."""
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_a_model_around_the_policy_compiles_with_inductor():
    """Inductor's backward failed with "donated buffers" on the traced solver; about 15 s
    on a busy 2-core machine."""
    _compiled_matches_eager("inductor")


def test_the_controller_is_built_once_and_rebuilt_when_the_options_change(states):
    policy = make_policy(on_unconverged="ignore")
    with torch.no_grad():
        first = policy.plan(states)
        controller = policy._solver[0]
        again = policy.plan(states)
        assert policy._solver[0] is controller  # reused: no MPC per call
        torch.testing.assert_close(again.u, first.u, atol=0.0, rtol=0.0)
        policy.options = dataclasses.replace(policy.options, max_iter=1)
        short = policy.plan(states)
    assert policy._solver[0] is not controller
    assert policy._solver[0].options.max_iter == 1
    assert int(short.info.iterations.max()) <= 1
    assert not any(key.startswith("_solver") for key in policy.state_dict())
    assert all(not isinstance(module, MPC) for module in policy.modules())
