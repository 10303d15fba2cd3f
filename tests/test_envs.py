"""Gymnasium environments of envs/: the API checker, registration, agreement with the
dynamics modules and with Gymnasium's Pendulum-v1, seeding, truncation, rendering, errors."""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv as GymnasiumCartPole
from gymnasium.envs.classic_control.pendulum import PendulumEnv as GymnasiumPendulum
from gymnasium.utils.env_checker import check_env

from mpc_policy import envs
from mpc_policy.envs import (
    CartPoleEnv,
    CartPoleParams,
    PendulumEnv,
    PendulumParams,
    WindyPendulumEnv,
    cartpole_state,
    pendulum_state,
)

ENV_IDS = list(envs.ENTRY_POINTS)


@pytest.fixture(autouse=True)
def _headless(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_env also opens the "human" mode: give SDL a window-less video driver."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # physical units on purpose (torque 2 N m, force 100 N): the MPC plans in them
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space")
        check_env(env.unwrapped)
    env.close()


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.register_envs()
        importlib.reload(envs)
    for env_id, entry_point in envs.ENTRY_POINTS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == entry_point
        assert spec.max_episode_steps == envs.MAX_EPISODE_STEPS[env_id]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_agrees_with_dynamics_and_cost_modules(env_id):
    env = gym.make(env_id).unwrapped
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = torch.tensor(env.state)
        action = env.action_space.sample() if rng.random() < 0.5 else 3 * env.action_space.high
        u = torch.tensor(np.clip(action, env.action_space.low, env.action_space.high)).double()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        with torch.no_grad():
            expected = env.dynamics(x, u)
            cost = env.cost(x.view(1, 1, -1), u.view(1, 1, -1))
        # the environment steps with the module's numpy twin: equal to float precision
        np.testing.assert_allclose(env.state, expected.numpy(), rtol=1e-14, atol=1e-14)
        np.testing.assert_array_equal(next_obs, env.state.astype(np.float32))
        assert reward == pytest.approx(-float(cost), rel=1e-12, abs=1e-12)
        assert terminated is False and truncated is False
        assert next_obs.dtype == np.float32 and next_obs is not obs
        obs = next_obs


def test_pendulum_reproduces_gymnasium_pendulum_v1():
    ours = PendulumEnv()
    theirs = GymnasiumPendulum()
    ours.reset(seed=0)
    theirs.reset(seed=0)
    rng = np.random.default_rng(1)
    # one step from many states, including ones where the velocity clip is active
    for _ in range(200):
        theta, theta_dot = rng.uniform(-np.pi, np.pi), rng.uniform(-8.0, 8.0)
        action = rng.uniform(-2.5, 2.5, size=1).astype(np.float32)
        ours.state = pendulum_state(theta, theta_dot)
        theirs.state = np.array([theta, theta_dot])
        np.testing.assert_allclose(ours.step(action)[0], theirs.step(action)[0], atol=1e-5)
    # and a whole 100-step trajectory from a shared state
    ours.state = pendulum_state(2.5, -0.5)
    theirs.state = np.array([2.5, -0.5])
    for _ in range(100):
        action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
        np.testing.assert_allclose(ours.step(action)[0], theirs.step(action)[0], atol=1e-5)


def pendulum_v1_step(theta, theta_dot, u, g, m, l, dt=0.05, max_speed=8.0):
    """Gymnasium Pendulum-v1's update (NOTES.md), written out in numpy at any g, m, l."""
    theta_dot = np.clip(
        theta_dot + (3 * g / (2 * l) * np.sin(theta) + 3.0 / (m * l**2) * u) * dt,
        -max_speed,
        max_speed,
    )
    return theta + theta_dot * dt, theta_dot


@pytest.mark.parametrize(("g", "m", "l"), [(10.0, 1.3, 0.7), (9.81, 0.6, 1.8), (4.0, 2.5, 2.5)])
def test_pendulum_matches_pendulum_v1_at_other_masses_and_lengths(g, m, l):
    """At m = l = 1 an inertia written 3/(m l) or 3/(m^2 l^2) passes: compare elsewhere, with
    Gymnasium's own environment (its g, m, l set) and with its equation written out."""
    ours = PendulumEnv(params={"gravity": g, "mass": m, "length": l})
    theirs = GymnasiumPendulum(g=g)
    theirs.m, theirs.l = m, l
    ours.reset(seed=0)
    theirs.reset(seed=0)
    rng = np.random.default_rng(2)
    for _ in range(200):
        theta, theta_dot = rng.uniform(-np.pi, np.pi), rng.uniform(-8.0, 8.0)
        action = rng.uniform(-2.0, 2.0, size=1).astype(np.float32)
        ours.state = pendulum_state(theta, theta_dot)
        theirs.state = np.array([theta, theta_dot])
        # (the rewards differ on purpose: ours is the paper's cost, 2 - 2 cos th for the angle)
        np.testing.assert_allclose(ours.step(action)[0], theirs.step(action)[0], atol=1e-5)
        next_theta, next_theta_dot = pendulum_v1_step(theta, theta_dot, float(action[0]), g, m, l)
        np.testing.assert_allclose(
            ours.state, pendulum_state(next_theta, next_theta_dot), rtol=1e-12, atol=1e-12
        )


def cartpole_lagrangian_step(state, force, g, m_c, m_p, l, dt):
    """One explicit Euler step of a cart with a uniform pole of half-length l, derived from
    the Lagrangian (Barto, Sutton and Anderson 1983; Florian 2007, without friction):

        [[m_c + m_p,        m_p l cos th], [p_dd ]   [u + m_p l th_dot^2 sin th]
         [m_p l cos th, 4/3 m_p l^2     ]] [th_dd] = [m_p g l sin th           ]

    with th from upright, positive to the right; solved as a 2x2 linear system."""
    p, p_dot, theta, theta_dot = state
    mass = np.array(
        [
            [m_c + m_p, m_p * l * np.cos(theta)],
            [m_p * l * np.cos(theta), 4.0 / 3.0 * m_p * l**2],
        ]
    )
    rhs = np.array([force + m_p * l * theta_dot**2 * np.sin(theta), m_p * g * l * np.sin(theta)])
    p_acc, theta_acc = np.linalg.solve(mass, rhs)
    return np.array(
        [p + dt * p_dot, p_dot + dt * p_acc, theta + dt * theta_dot, theta_dot + dt * theta_acc]
    )


@pytest.mark.parametrize(
    "params",
    [{}, {"gravity": 9.81, "cart_mass": 1.7, "pole_mass": 0.4, "half_length": 0.8, "dt": 0.02}],
)
def test_cartpole_matches_an_independent_derivation_and_gymnasium(params):
    """The cart-pole's step against its Lagrangian equations solved in numpy, and against
    Gymnasium's CartPole-v1 (Euler) at the same constants with its force set to ours."""
    ours = CartPoleEnv(params=params)
    p = ours.params
    theirs = GymnasiumCartPole()
    theirs.gravity, theirs.masscart, theirs.masspole = p.gravity, p.cart_mass, p.pole_mass
    theirs.total_mass = p.cart_mass + p.pole_mass
    theirs.length, theirs.tau = p.half_length, p.dt
    theirs.polemass_length = p.pole_mass * p.half_length
    ours.reset(seed=0)
    theirs.reset(seed=0)
    rng = np.random.default_rng(3)
    for _ in range(200):
        state = np.array(
            [rng.uniform(-2, 2), rng.uniform(-3, 3), rng.uniform(-np.pi, np.pi), rng.normal(0, 3)]
        )
        force = float(rng.uniform(-p.max_force, p.max_force))
        ours.state = cartpole_state(*state)
        ours.step(np.array([force]))
        expected = cartpole_lagrangian_step(
            state, force, p.gravity, p.cart_mass, p.pole_mass, p.half_length, p.dt
        )
        np.testing.assert_allclose(ours.state, cartpole_state(*expected), rtol=1e-9, atol=1e-9)
        theirs.state = state.copy()
        theirs.force_mag, theirs.steps_beyond_terminated = abs(force), None
        theirs.step(int(force > 0))
        np.testing.assert_allclose(ours.state, cartpole_state(*theirs.state), rtol=0, atol=1e-9)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_trajectory(env_id):
    def trajectory(seed):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(20):
            out.append(env.step(env.action_space.sample())[0])
        return np.stack(out)

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.array_equal(trajectory(7), trajectory(8))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_time_limit_truncates(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    for step in range(1, envs.MAX_EPISODE_STEPS[env_id] + 1):
        _, _, terminated, truncated, _ = env.step(action)
        assert terminated is False
        assert type(truncated) is bool
        assert truncated == (step == envs.MAX_EPISODE_STEPS[env_id])


def test_starting_state_distributions():
    pendulum = PendulumEnv()
    angles = []
    for seed in range(200):
        cos, sin, theta_dot = pendulum.reset(seed=seed)[0]
        angles.append(np.arctan2(sin, cos))
        assert abs(theta_dot) <= 1.0
    assert max(np.abs(angles)) <= np.pi / 2 + 1e-6
    full = [pendulum.reset(seed=s, options={"full_circle": True})[0] for s in range(200)]
    assert max(abs(np.arctan2(o[1], o[0])) for o in full) > 2.5
    assert PendulumEnv(full_circle=True).reset(seed=0)[0][0] == full[0][0]
    cartpole = CartPoleEnv()
    starts = np.stack([cartpole.reset(seed=s)[0] for s in range(200)])
    assert np.all(np.abs(starts[:, :2]) <= 0.5) and np.all(np.abs(starts[:, 4]) <= 1.0)
    assert starts[:, 2].min() < -0.9  # angles all around the circle


def test_reset_state_option_and_errors():
    env = CartPoleEnv()
    x = np.array([0.1, -0.2, -1.0, 0.0, 0.3])
    obs, _ = env.reset(seed=0, options={"state": x})
    np.testing.assert_array_equal(env.state, x)
    np.testing.assert_array_equal(obs, x.astype(np.float32))
    with pytest.raises(ValueError, match="state"):
        env.reset(options={"state": np.zeros(3)})
    with pytest.raises(ValueError, match="state"):
        env.reset(options={"state": np.full(5, np.nan)})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"full_circle": True})
    with pytest.raises(gym.error.ResetNeeded):
        PendulumEnv().step(np.zeros(1, dtype=np.float32))


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (np.zeros(2, dtype=np.float32), ValueError, r"action: expected shape \(1,\)"),
        (np.float32(0.0), ValueError, r"action: expected shape \(1,\)"),
        (np.array([np.nan], dtype=np.float32), ValueError, "finite"),
        (np.array([np.inf]), ValueError, "finite"),
        (np.array(["a"]), TypeError, "real numbers"),
    ],
)
def test_bad_actions_raise(env_id, action, error, message):
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(error, match=message):
        env.step(action)


def test_bad_constructor_arguments_raise():
    with pytest.raises(TypeError, match="params"):
        PendulumEnv(params=CartPoleParams())
    with pytest.raises(TypeError, match="params"):
        WindyPendulumEnv(params=PendulumParams())
    with pytest.raises(ValueError, match="render_mode"):
        PendulumEnv(render_mode="ansi")
    with pytest.raises(ValueError, match="mass"):
        gym.make("mpc_policy/Pendulum-v0", params=PendulumParams(mass=-1.0))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rgb_array_render(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    env.step(env.action_space.high)
    for _ in range(5):
        env.step(env.action_space.high)
    second = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape == (*env.unwrapped.render_size[::-1], 3)
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 2
    assert not np.array_equal(first, second)
    env.close()


def test_human_render_runs_headless():
    env = gym.make("mpc_policy/WindyPendulum-v0", render_mode="human")
    env.reset(seed=0)
    assert env.step(env.action_space.high)[0].shape == (3,)
    assert env.render() is None
    env.close()
    env.close()


def test_env_parameters_are_exact_float64():
    env = CartPoleEnv(params=CartPoleParams(pole_mass=0.3))
    assert env.dynamics.pole_mass.dtype == torch.float64
    assert env.dynamics.pole_mass.item() == 0.3
    assert not any(p.requires_grad for p in env.dynamics.parameters())


@pytest.mark.parametrize(
    ("env_id", "params", "field"),
    [
        ("mpc_policy/Pendulum-v0", {"mass": 1.3, "length": 0.7}, "length"),
        ("mpc_policy/CartPole-v0", {"pole_mass": 0.2}, "pole_mass"),
        ("mpc_policy/WindyPendulum-v0", {"wind": -0.5, "max_speed": None}, "wind"),
        ("mpc_policy/CartPoleTrack-v0", {"half_length": 0.6}, "half_length"),
    ],
)
def test_params_as_plain_data_round_trip_through_the_spec(env_id, params, field):
    """zoo env_kwargs, EnvSpec.to_json and Minari's recorded specs hold plain data: a mapping
    of parameter fields builds the same physics, and the spec rebuilds it from JSON."""
    env = gym.make(env_id, params=params)
    assert getattr(env.unwrapped.params, field) == params[field]
    assert getattr(env.unwrapped.dynamics, field, None) is None or getattr(
        env.unwrapped.dynamics, field
    ).item() == pytest.approx(params[field])
    again = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert again.unwrapped.params == env.unwrapped.params
    assert type(again.unwrapped.params) is type(env.unwrapped.params)
    first, _ = env.reset(seed=4)
    np.testing.assert_array_equal(again.reset(seed=4)[0], first)
    action = env.action_space.high
    np.testing.assert_array_equal(again.step(action)[0], env.step(action)[0])


def test_params_mapping_errors_name_the_key_and_the_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"params: unknown key 'damping' for PendulumParams; "
        r"the valid keys are \['gravity', 'mass', 'length'",
    ):
        gym.make("mpc_policy/Pendulum-v0", params={"damping": 0.1})
    with pytest.raises(ValueError, match="mass"):
        PendulumEnv(params={"mass": -1.0})
    with pytest.raises(TypeError, match="params: expected a PendulumParams or a mapping"):
        PendulumEnv(params=[("mass", 1.0)])
    with pytest.raises(TypeError, match="string keys"):
        CartPoleEnv(params={1: 2.0})
    with pytest.raises(TypeError, match="WindyPendulumParams"):
        WindyPendulumEnv(params=PendulumParams())


@pytest.mark.parametrize("env_id", list(envs.VECTOR_ENTRY_POINTS))
def test_native_vector_env_equals_sync_vector_env(env_id):
    """gymnasium.make_vec's default for our ids is the native vector environment: one batched
    step of all copies. Same seeds, same actions: the same trajectories as Gymnasium's
    SyncVectorEnv of the same environments, across time limits and autoresets."""
    kwargs = {"num_envs": 5, "max_episode_steps": 7}
    native = gym.make_vec(env_id, **kwargs)
    sync = gym.make_vec(env_id, vectorization_mode="sync", **kwargs)
    assert type(native.unwrapped).__name__.endswith("VectorEnv")
    assert not isinstance(native.unwrapped, gym.vector.SyncVectorEnv)
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"]
    assert native.single_action_space == sync.single_action_space
    assert native.observation_space == sync.observation_space
    first_native, _ = native.reset(seed=11)
    first_sync, _ = sync.reset(seed=11)
    np.testing.assert_array_equal(first_native, first_sync)
    assert len(np.unique(first_native[:, -1])) == 5  # each copy its own start
    native.action_space.seed(3)
    for step in range(20):
        actions = 1.5 * native.action_space.sample()  # some beyond the bound: clipped
        a, b = native.step(actions), sync.step(actions)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)  # observations
        np.testing.assert_allclose(a[1], b[1], rtol=1e-10, atol=1e-12)  # rewards
        np.testing.assert_array_equal(a[2], b[2])  # terminated
        np.testing.assert_array_equal(a[3], b[3])  # truncated
        assert a[3].all() == (step % 8 == 6)
    mask = np.array([True, False, True, False, False])
    np.testing.assert_array_equal(
        native.reset(seed=[1, 2, 3, 4, 5], options={"reset_mask": mask})[0],
        sync.reset(seed=[1, 2, 3, 4, 5], options={"reset_mask": mask.copy()})[0],
    )
    native.close()
    sync.close()


def test_native_vector_env_arguments_and_errors():
    vector = gym.make_vec("mpc_policy/Pendulum-v0", num_envs=3, params={"mass": 1.4})
    assert all(env.params.mass == 1.4 for env in vector.unwrapped.envs)
    with pytest.raises(gym.error.ResetNeeded):
        vector.step(np.zeros((3, 1), dtype=np.float32))
    vector.reset(seed=0, options={"state": pendulum_state(0.5, 0.0)})
    np.testing.assert_array_equal(vector.unwrapped.states, np.stack([pendulum_state(0.5, 0)] * 3))
    with pytest.raises(ValueError, match=r"action: expected shape \(3, 1\)"):
        vector.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        vector.step(np.full((3, 1), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="num_envs"):
        gym.make_vec("mpc_policy/Pendulum-v0", num_envs=0, vectorization_mode="vector_entry_point")
    from mpc_policy.envs.cartpole import CartPoleTrackEnv
    from mpc_policy.envs.vector import DynamicsVectorEnv

    class TrackVector(DynamicsVectorEnv):
        env_class = CartPoleTrackEnv

    with pytest.raises(TypeError, match="overrides step"):
        TrackVector(2)
    frames = gym.make_vec("mpc_policy/CartPole-v0", num_envs=2, render_mode="rgb_array")
    frames.reset(seed=0)
    first, second = frames.render()
    assert first.shape == (400, 600, 3) and not np.array_equal(first, second)
