"""SB3 policies with an MPC actor (mpc_policy/sb3/): PPO and A2C on every environment,
SAC and TD3, the model from an environment id, save and load, single vs batched
prediction, batch-independent log-probabilities, initialization from a trained MPCPolicy,
the phase from set_training_mode, logging, the progress bar, and the example."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpc_policy import envs
from mpc_policy.envs import PendulumDynamics, pendulum_cost
from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3 import (
    MPCActorCriticPolicy,
    MPCHealthCallback,
    MPCSACPolicy,
    MPCTD3Policy,
    TqdmCallback,
    build_mpc,
    learned_values,
    load_mpc_weights,
)

pytestmark = pytest.mark.sb3

ENV_IDS = list(envs.ENTRY_POINTS)
PENDULUM = "mpc_policy/Pendulum-v0"
ROOT = Path(__file__).resolve().parents[1]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def observations(env_id: str, n: int, seed: int = 0) -> np.ndarray:
    """(n, n_obs) float32 start observations of an environment."""
    env = gym.make(env_id)
    return np.stack([env.reset(seed=seed + i)[0] for i in range(n)])


def ppo(env_id: str = PENDULUM, **policy_kwargs) -> PPO:
    env = make_vec_env(env_id, n_envs=2, seed=0)
    model = {} if "mpc_policy" in policy_kwargs else {"env_id": env_id}
    kwargs = {"horizon": 5, **model, **policy_kwargs}
    return PPO(
        MPCActorCriticPolicy,
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        learning_rate=1e-2,
        seed=0,
        policy_kwargs=kwargs,
    )


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def mpc_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.state_dict().items() if ".mpc." in f".{k}"}


@pytest.mark.slow
@pytest.mark.parametrize("algo", [PPO, A2C])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_on_policy_training_changes_the_learned_parameters_only(algo, env_id):
    env = make_vec_env(env_id, n_envs=4, seed=0)
    extra = {"n_steps": 32, "batch_size": 64, "n_epochs": 1} if algo is PPO else {"n_steps": 8}
    model = algo(
        MPCActorCriticPolicy,
        env,
        learning_rate=1e-2,
        seed=0,
        policy_kwargs={"env_id": env_id, "horizon": 4, "learn": ["cost.weights", "dynamics"]},
        **extra,
    )
    before = mpc_state(model.policy)
    model.learn(256)
    moved = changed(before, mpc_state(model.policy))
    dynamics = {k for k in before if k.startswith("mpc.dynamics.")}
    assert dynamics and dynamics <= moved
    assert "mpc.cost.raw_weights" in moved
    assert "mpc.cost.goal" not in moved


def test_env_id_takes_the_environments_model_and_learns_the_cost():
    model = PPO(
        MPCActorCriticPolicy,
        PENDULUM,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs={"env_id": PENDULUM},
    )
    env = model.get_env().envs[0].unwrapped
    mpc = model.policy.mpc
    assert mpc.horizon == 10 and isinstance(mpc.dynamics, type(env.dynamics))
    truth = dict(env.dynamics.named_parameters())
    for name, value in mpc.dynamics.named_parameters():
        torch.testing.assert_close(value, truth[name], rtol=0, atol=0)
        assert not value.requires_grad
    assert set(learned_values(mpc)) == {"cost.weights", "cost.goal"}
    before = mpc_state(model.policy)
    model.learn(16)
    assert changed(before, mpc_state(model.policy)) == {"mpc.cost.raw_weights", "mpc.cost.goal"}
    # the environment's own modules are untouched
    assert not any(p.requires_grad for p in env.cost.parameters())


def test_initial_values_and_learn_select_the_parameters():
    model = ppo(
        learn=["cost.weights", "dynamics.mass"],
        initial_values={"cost.weights": [2.0, 2.0, 0.5, 0.3], "dynamics.length": 1.5},
    )
    mpc = model.policy.mpc
    torch.testing.assert_close(
        mpc.cost.weights, torch.tensor([2.0, 2.0, 0.5, 0.3], dtype=torch.float64), **TOL
    )
    assert float(mpc.dynamics.length) == 1.5
    assert set(learned_values(mpc)) == {"cost.weights", "dynamics.mass"}


def test_save_and_load_give_the_same_actions(tmp_path):
    model = ppo(learn=["cost", "dynamics"])
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model")  # no environment: the kwargs name its id
    obs = observations(PENDULUM, 6)
    expected, _ = model.predict(obs, deterministic=True)
    actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=1e-6, atol=1e-6)
    for name, value in learned_values(model.policy.mpc).items():
        torch.testing.assert_close(learned_values(loaded.policy.mpc)[name], value, **TOL)
    model.policy.save(tmp_path / "policy.pt")
    policy = MPCActorCriticPolicy.load(tmp_path / "policy.pt")
    actions, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=1e-6, atol=1e-6)


def test_predict_single_and_batch_agree():
    model = ppo()
    obs = observations(PENDULUM, 5)
    batch, _ = model.predict(obs, deterministic=True)
    for i in range(len(obs)):
        single, _ = model.predict(obs[i], deterministic=True)
        np.testing.assert_allclose(single, batch[i], rtol=1e-6, atol=1e-6)
    torch.manual_seed(3)
    noisy, _ = model.predict(obs, deterministic=False)
    torch.manual_seed(3)
    again, _ = model.predict(obs, deterministic=False)
    np.testing.assert_array_equal(noisy, again)
    assert not np.allclose(noisy, batch)
    for i in (0, 3):
        torch.manual_seed(11)
        single, _ = model.predict(obs[i], deterministic=False)
        torch.manual_seed(11)
        # the same seed, the observation first in its own batch: the same draw
        first, _ = model.predict(np.roll(obs, -i, axis=0), deterministic=False)
        np.testing.assert_allclose(single, first[0], rtol=1e-6, atol=1e-6)


def test_log_probabilities_do_not_depend_on_the_minibatch():
    model = ppo(learn=["cost", "dynamics"])
    policy = model.policy
    obs = torch.as_tensor(observations(PENDULUM, 24, seed=5))
    with torch.no_grad():
        actions, _, rollout_log_prob = policy(obs)  # as in a rollout
    assert actions.dtype == rollout_log_prob.dtype == torch.float32
    _, whole, _ = policy.evaluate_actions(obs, actions)
    torch.testing.assert_close(whole, rollout_log_prob, **TOL)  # PPO's first ratio is 1
    order = torch.randperm(len(obs), generator=torch.Generator().manual_seed(0))
    shuffled = torch.empty_like(whole)
    for rows in order.split(5):
        _, log_prob, _ = policy.evaluate_actions(obs[rows], actions[rows])
        shuffled[rows] = log_prob
    torch.testing.assert_close(shuffled, whole, **TOL)
    whole.sum().backward()
    assert policy.mpc.cost.raw_weights.grad is not None
    assert policy.mpc.dynamics.mass.grad is not None


def test_a_policy_built_by_hand_reports_its_solves_under_sb3s_training_mode():
    env = gym.make(PENDULUM)
    policy = MPCActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, env_id=PENDULUM, horizon=5
    )
    obs = torch.as_tensor(observations(PENDULUM, 3))
    policy.set_training_mode(True)  # SB3, before a gradient step
    with torch.no_grad():
        policy.get_distribution(obs)
    policy.set_training_mode(False)  # SB3, before a rollout or predict
    policy.get_distribution(obs[:2])  # gradients enabled: the phase is still "rollout"
    summary = policy.solver_health.summary()
    assert summary["update_solves"] == 3 and summary["rollout_solves"] == 2


def trained_mpc_policy() -> MPCPolicy:
    """An MPCPolicy as behaviour cloning would leave it (other weights, other mass)."""
    dynamics = PendulumDynamics(dtype=torch.float64)
    with torch.no_grad():
        dynamics.mass.fill_(1.3)
    cost = pendulum_cost(dtype=torch.float64)
    return MPCPolicy(dynamics, cost, 5, -2.0, 2.0, solve_dtype=torch.float64)


def test_initialize_from_a_trained_mpc_policy():
    trained = trained_mpc_policy()
    obs = observations(PENDULUM, 4)
    with torch.no_grad():
        expected = trained(torch.as_tensor(obs)).numpy()
    model = ppo(horizon=None, mpc_policy=trained)
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)
    other = ppo()
    load_mpc_weights(other.policy, trained.state_dict())
    actions, _ = other.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mpc_policy"):
        ppo(mpc_policy=trained)  # a horizon alongside it


@pytest.mark.slow
@pytest.mark.parametrize("algo, policy_class", [(SAC, MPCSACPolicy), (TD3, MPCTD3Policy)])
def test_off_policy_actors(algo, policy_class, tmp_path):
    env = make_vec_env(PENDULUM, n_envs=2, seed=0)
    model = algo(
        policy_class,
        env,
        learning_starts=32,
        batch_size=16,
        buffer_size=500,
        learning_rate=1e-2,
        seed=0,
        policy_kwargs={
            "env_id": PENDULUM,
            "horizon": 4,
            "learn": ["cost.weights"],
            "net_arch": [32],
        },
    )
    obs = observations(PENDULUM, 4)
    # the deterministic action is the MPC's control, through the [-1, 1] rescaling
    with torch.no_grad():
        control = model.policy.actor.mpc(torch.as_tensor(obs)).numpy()
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, np.clip(control, -2.0, 2.0), rtol=1e-4, atol=1e-4)
    before = mpc_state(model.policy)
    model.learn(96)
    moved = changed(before, mpc_state(model.policy))
    assert "actor.mpc.cost.raw_weights" in moved
    if algo is TD3:  # the target actor follows by Polyak averaging
        assert "actor_target.mpc.cost.raw_weights" in moved
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected, atol=1e-6)
    load_mpc_weights(model.policy, trained_mpc_policy())
    targets = [m for m in model.policy.modules() if isinstance(m, MPCPolicy)]
    assert len(targets) == (2 if algo is TD3 else 1)
    for mpc in targets:
        assert float(mpc.dynamics.mass) == pytest.approx(1.3)


def test_health_callback_logs_floats_and_the_progress_bar_counts_steps(tmp_path):
    model = ppo(learn=["cost.weights"])
    model.set_logger(configure(str(tmp_path), ["csv"]))
    bar = io.StringIO()
    # the second rollout end sees an update
    model.learn(128, callback=[MPCHealthCallback(), TqdmCallback("ppo", file=bar)])
    assert "ppo: 100%" in bar.getvalue() and "128/128" in bar.getvalue()
    header, *rows = (tmp_path / "progress.csv").read_text().splitlines()
    keys = header.split(",")
    for key in (
        "solver/rollout/iterations_mean",
        "solver/rollout/unconverged_fraction",
        "solver/iterations_mean",
        "solver/solve_time_max",
        "params/cost/weight_3",
    ):
        assert key in keys
        column = [row.split(",")[keys.index(key)] for row in rows]
        assert all(float(value) >= 0 for value in column if value)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"learn": ["cost.nothing"]}, ValueError, "learn"),
        ({"learn": "cost"}, TypeError, "learn"),
        ({"initial_values": {"cost.weights": [1.0, 1.0]}}, ValueError, "shape"),
        ({"initial_values": {"dynamics.mass": 1.0, "dynamics.size": 1.0}}, ValueError, "size"),
        ({"initial_values": {"cost.weights": [1.0, -1.0, 1.0, 1.0]}}, ValueError, "positive"),
        ({"use_sde": True}, ValueError, "use_sde"),
        ({"net_arch": {"pi": [8], "vf": [8]}}, ValueError, "net_arch"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    model_kwargs = {"dynamics": PendulumDynamics(), "cost": pendulum_cost(), **kwargs}
    space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    with pytest.raises(error, match=match):
        MPCActorCriticPolicy(
            space, spaces.Box(-2.0, 2.0, (1,), np.float32), lambda _: 1e-3, **model_kwargs
        )


def test_without_a_model_or_an_environment_it_says_what_to_pass():
    space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    with pytest.raises(ValueError, match="dynamics and cost"):
        MPCActorCriticPolicy(space, spaces.Box(-2.0, 2.0, (1,), np.float32), lambda _: 1e-3)
    with pytest.raises(ValueError, match="dynamics and cost"):
        PPO(MPCActorCriticPolicy, PENDULUM)  # the environment is not searched for a model
    with pytest.raises(ValueError, match=r"env_id: .* 'Pendulum-v1' has no module \['cost', "):
        # Gymnasium's own pendulum: no model to take
        PPO(MPCActorCriticPolicy, "Pendulum-v1", policy_kwargs={"env_id": "Pendulum-v1"})
    with pytest.raises(TypeError, match="action_space"):
        build_mpc(spaces.Discrete(3), dynamics=PendulumDynamics(), cost=pendulum_cost())


@pytest.mark.slow
def test_example_runs_and_logs(tmp_path):
    command = [
        sys.executable, str(ROOT / "examples" / "ppo_pendulum.py"),
        "--total-timesteps", "128", "--n-envs", "2", "--n-steps", "32", "--batch-size", "32",
        "--n-epochs", "1", "--eval-every", "64", "--eval-episodes", "2",
        "--episode-steps", "10", "--horizon", "3", "--log-dir", str(tmp_path),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, timeout=300)
    curve = (tmp_path / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("steps,mean_return") and len(curve) == 4  # evals at 0, 64, 128
    run = tmp_path / "PPO_1"
    tags = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload().Tags()["scalars"]
    assert {"eval/mean_reward", "solver/rollout/iterations_mean", "params/cost/weight_3"} <= set(
        tags
    )


def test_vectorized_environments_are_one_batched_solve_and_rollout_log_probs_hold():
    """PPO's rollout solves all environments' observations in one call per step, and the
    log-probabilities it stores are those of the update (no warm start enters the mean)."""
    env = make_vec_env(PENDULUM, n_envs=3, seed=0)
    model = PPO(
        MPCActorCriticPolicy,
        env,
        n_steps=4,
        batch_size=12,
        n_epochs=1,
        learning_rate=0.0,  # the update leaves the parameters of the rollout
        seed=0,
        policy_kwargs={"env_id": PENDULUM, "horizon": 5, "learn": ["cost"]},
    )
    calls: list[int] = []
    plan = model.policy.mpc.plan

    def counting_plan(obs, *args, **kwargs):
        calls.append(int(obs.shape[0]))
        return plan(obs, *args, **kwargs)

    model.policy.mpc.plan = counting_plan  # type: ignore[method-assign]
    model.learn(total_timesteps=12)
    assert calls[:4] == [3, 3, 3, 3]  # the rollout: one solve of all 3 environments a step
    assert model.policy.mpc.warm_start is False
    buffer = model.rollout_buffer
    obs = torch.as_tensor(buffer.observations.reshape(12, -1))
    actions = torch.as_tensor(buffer.actions.reshape(12, -1))
    with torch.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(obs, actions)
    stored = torch.as_tensor(buffer.log_probs.reshape(12))
    torch.testing.assert_close(log_prob, stored, **TOL)


def test_nan_observation_is_named_not_planned_from():
    model = ppo()
    obs = observations(PENDULUM, 3)
    obs[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"obs: rows \[1\] of 3 contain NaN or Inf"):
        model.predict(obs, deterministic=True)


def test_only_the_sb3_package_imports_sb3_and_the_package_import_does_not():
    """In the solver package and the environments; the learning layer (agents/, whose RL
    experiment trains SB3 models) imports it inside the functions that use it."""
    sources = [*(ROOT / "mpc_policy").glob("*.py"), *(ROOT / "mpc_policy").glob("*/**/*.py")]
    importing = {
        path.relative_to(ROOT).as_posix()
        for path in sources
        if "stable_baselines3" in path.read_text()
        and "sb3" not in path.parent.name
        and not path.relative_to(ROOT).as_posix().startswith("mpc_policy/agents/")
    }
    assert not importing, importing
    check = "import sys, mpc_policy; assert 'stable_baselines3' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, cwd=ROOT, timeout=120)


def test_evaluation_curve_says_what_it_needs_of_its_eval_callback():
    """EvaluationCurve reads the episode returns an EvalCallback keeps with a log path."""
    from stable_baselines3.common.callbacks import EvalCallback

    from mpc_policy.sb3 import EvaluationCurve

    limit = {"max_episode_steps": 5}
    env = make_vec_env(PENDULUM, n_envs=2, seed=0, env_kwargs=limit)
    eval_env = make_vec_env(PENDULUM, n_envs=2, seed=7, env_kwargs=limit)
    kwargs = {"env_id": PENDULUM, "horizon": 3, "learn": ["cost.weights"]}
    model = PPO(MPCActorCriticPolicy, env, n_steps=8, batch_size=16, n_epochs=1,
                policy_kwargs=kwargs, seed=0)  # fmt: skip
    curve = EvaluationCurve(eval_seed=7)
    curve.init_callback(model)
    curve.evaluate(eval_env, 2)
    assert curve.rows[0]["steps"] == 0.0 and "cost.weights[3]" in curve.rows[0]
    evaluation = EvalCallback(eval_env, n_eval_episodes=2, eval_freq=4, callback_after_eval=curve)
    with pytest.raises(ValueError, match="log_path"):
        model.learn(16, callback=evaluation)


@pytest.mark.parametrize(
    "bounds, match",
    [
        ((-1.0, 1.0), r"u_lower -1.0 is not the action space's low \[-2.0\]"),
        ((-2.0, torch.tensor([1.0], dtype=torch.float64)), r"u_upper \[1.0\] is not .* high"),
        ((None, None), r"u_lower is None \(unbounded\)"),
    ],
)
def test_an_mpc_policy_whose_bounds_are_not_the_action_box_is_refused(bounds, match):
    """Bounds [-1, 1] on the pendulum's [-2, 2] box: SB3 would apply controls the MPC
    did not plan (clipped by PPO, rescaled by SAC); refused when the policy is built."""
    dynamics, cost = PendulumDynamics(dtype=torch.float64), pendulum_cost(dtype=torch.float64)
    other = MPCPolicy(dynamics, cost, 5, *bounds, solve_dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ppo(horizon=None, mpc_policy=other)
    env = make_vec_env(PENDULUM, n_envs=1, seed=0)
    with pytest.raises(ValueError, match=match):
        SAC(MPCSACPolicy, env, policy_kwargs={"mpc_policy": other, "net_arch": [8]})
    # the same bounds as (m,) tensors, or as rows of them, are the box
    box = torch.full((5, 1), 2.0, dtype=torch.float64)
    same = MPCPolicy(dynamics, cost, 5, -box, box, solve_dtype=torch.float64)
    assert ppo(horizon=None, mpc_policy=same).policy.mpc.horizon == 5


@pytest.mark.parametrize(
    "observation_space, action_space, match",
    [
        (spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.Box(-2.0, 2.0, (1,)), "observation_space"),
        (spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (2,)), "action_space"),
    ],
)
@pytest.mark.parametrize("policy_class", [MPCActorCriticPolicy, MPCSACPolicy, MPCTD3Policy])
def test_spaces_the_model_does_not_fit_are_refused_at_construction(
    observation_space, action_space, match, policy_class
):
    kwargs = {"dynamics": PendulumDynamics(), "cost": pendulum_cost(), "horizon": 3}
    with pytest.raises(ValueError, match=match):
        policy_class(observation_space, action_space, lambda _: 1e-3, **kwargs)


def test_obs_to_state_that_fits_the_observations_is_accepted():
    """An observation of (theta, theta_dot) mapped to the model's (cos, sin, theta_dot)."""

    def angle_to_state(obs: torch.Tensor) -> torch.Tensor:
        return torch.stack([obs[:, 0].cos(), obs[:, 0].sin(), obs[:, 1]], dim=-1)

    kwargs = {"dynamics": PendulumDynamics(), "cost": pendulum_cost(), "horizon": 3}
    space = spaces.Box(-4.0, 4.0, (2,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
    with pytest.raises(ValueError, match="observation_space"):
        MPCActorCriticPolicy(space, action_space, lambda _: 1e-3, **kwargs)
    policy = MPCActorCriticPolicy(
        space, action_space, lambda _: 1e-3, obs_to_state=angle_to_state, **kwargs
    )
    action, _ = policy.predict(np.array([0.3, 0.1], dtype=np.float32), deterministic=True)
    assert action.shape == (1,)


def test_normalized_observations_are_refused_with_what_to_do(tmp_path):
    """Behind VecNormalize(norm_obs=True) the MPC would plan from (obs - mean) / std as if
    it were the state: refused when the algorithm builds the policy, when a saved model is
    loaded onto such an environment, and when learning starts after set_env; reward
    normalization alone is fine."""
    from stable_baselines3.common.vec_env import VecNormalize

    kwargs = {"env_id": PENDULUM, "horizon": 3, "learn": ["cost.weights"]}
    normalized = VecNormalize(make_vec_env(PENDULUM, n_envs=2, seed=0), norm_obs=True)
    match = r"VecNormalize\(norm_obs=True\) is refused.*norm_obs=False"
    with pytest.raises(ValueError, match=match):
        PPO(MPCActorCriticPolicy, normalized, n_steps=8, batch_size=16, policy_kwargs=kwargs)
    with pytest.raises(ValueError, match=match):
        SAC(MPCSACPolicy, normalized, policy_kwargs={**kwargs, "net_arch": [8]})
    rewards_only = VecNormalize(make_vec_env(PENDULUM, n_envs=2, seed=0), norm_obs=False)
    model = PPO(MPCActorCriticPolicy, rewards_only, n_steps=8, batch_size=16, policy_kwargs=kwargs)
    model.learn(16, callback=MPCHealthCallback())
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=match):
        PPO.load(tmp_path / "model", env=normalized)
    model.set_env(normalized)
    with pytest.raises(ValueError, match=match):
        model.learn(16, callback=MPCHealthCallback())
    wrapped = make_vec_env(PENDULUM, n_envs=1, wrapper_class=gym.wrappers.NormalizeObservation)
    with pytest.raises(ValueError, match="NormalizeObservation is refused"):
        PPO(MPCActorCriticPolicy, wrapped, n_steps=8, batch_size=8, policy_kwargs=kwargs)


def sac_model(**policy_kwargs) -> SAC:
    env = make_vec_env(PENDULUM, n_envs=1, seed=0)
    kwargs = {"env_id": PENDULUM, "horizon": 4, "learn": ["cost.weights"], "net_arch": [8]}
    return SAC(MPCSACPolicy, env, seed=0, policy_kwargs={**kwargs, **policy_kwargs})


def test_sac_log_std_log_probability_and_entropy_against_an_independent_computation():
    """SAC's stochastic part: log_std (default log 0.25, the given value, clamped by SB3's
    limits), the log-probability of the squashed actions it samples (against torch's own
    tanh-transformed Gaussian), their spread (z = atanh(a) is N(mean, std^2)) and the
    entropy SAC maximizes (-log_prob) reaching log_std."""
    from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
    from torch.distributions import Normal, TanhTransform, TransformedDistribution

    actor = sac_model().policy.actor
    torch.testing.assert_close(actor.log_std.detach(), torch.full((1,), float(np.log(0.25))))
    assert actor.log_std.requires_grad
    assert any(p is actor.log_std for g in actor.optimizer.param_groups for p in g["params"])
    assert float(sac_model(log_std_init=-1.5).policy.actor.log_std.detach()) == -1.5
    # one observation with an interior first control, repeated: 512 draws from one Gaussian
    obs = torch.as_tensor(observations(PENDULUM, 8, seed=1))
    with torch.no_grad():
        u = actor.mpc(obs)[:, 0]  # (8,), the pendulum's box is [-2, 2]
    row = int(torch.argmin(u.abs()))
    assert abs(float(u[row])) < 1.9
    batch = obs[row].repeat(512, 1)
    mean = torch.atanh(u[row] / 2.0).float()  # scale(u) = u / 2 on [-2, 2]
    with torch.no_grad():
        actor.log_std.fill_(np.log(0.3))
    torch.manual_seed(0)
    actions, log_prob = actor.action_log_prob(batch)
    assert actions.shape == (512, 1) and log_prob.shape == (512,)
    squashed = TransformedDistribution(Normal(mean, torch.tensor(0.3)), TanhTransform())
    # SB3 adds 1e-6 inside log(1 - a^2): within 1e-4 away from the bounds
    torch.testing.assert_close(
        log_prob, squashed.log_prob(actions.detach()).sum(-1), rtol=0, atol=1e-4
    )
    z = (torch.atanh(actions.detach().double()) - mean) / 0.3  # 512 standard normals
    assert abs(float(z.mean())) < 0.2 and abs(float(z.std()) - 1.0) < 0.1
    # the entropy term: d E[-log_prob] / d log_std = 1 per dimension for the Gaussian part
    # plus the squashing's share, estimated on the same draws
    (-log_prob.mean()).backward()
    expected = 1.0 - float((2 * z * 0.3 * torch.tanh(mean + 0.3 * z)).mean())
    assert float(actor.log_std.grad) == pytest.approx(expected, abs=1e-3)
    with torch.no_grad():
        actor.log_std.fill_(LOG_STD_MAX + 3.0)
    _, log_std, _ = actor.get_action_dist_params(obs[:2])
    torch.testing.assert_close(log_std, torch.full((2, 1), float(LOG_STD_MAX)))
    with torch.no_grad():
        actor.log_std.fill_(LOG_STD_MIN - 3.0)
    _, log_std, _ = actor.get_action_dist_params(obs[:2])
    torch.testing.assert_close(log_std, torch.full((2, 1), float(LOG_STD_MIN)))


def test_ppo_log_probability_and_entropy_against_an_independent_computation():
    model = ppo(log_std_init=-0.7)
    policy = model.policy
    obs = torch.as_tensor(observations(PENDULUM, 6, seed=2))
    actions = torch.linspace(-1.5, 1.5, 6).reshape(6, 1)
    _, log_prob, entropy = policy.evaluate_actions(obs, actions)
    with torch.no_grad():
        mean = policy.mpc(obs)
    gaussian = torch.distributions.Normal(mean, torch.exp(torch.tensor(-0.7)))
    torch.testing.assert_close(log_prob, gaussian.log_prob(actions).sum(-1), **TOL)
    torch.testing.assert_close(entropy, gaussian.entropy().sum(-1), **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("algo, policy_class", [(SAC, MPCSACPolicy), (PPO, MPCActorCriticPolicy)])
def test_health_logs_every_solve_since_the_last_dump(algo, policy_class, tmp_path):
    """SAC ends a rollout every step but dumps once an episode (10 steps): each dump holds
    the statistics of every solve since the previous one (read back from tensorboard and
    compared with a tally of the solves the MPC made), under the tags behaviour cloning
    uses; the learned parameters by name."""
    env = make_vec_env(PENDULUM, n_envs=1, seed=0, env_kwargs={"max_episode_steps": 10})
    kwargs = {"env_id": PENDULUM, "horizon": 3, "learn": ["cost.weights", "dynamics.mass"]}
    if algo is SAC:
        model = algo(policy_class, env, learning_starts=10, batch_size=4, seed=0,
                     policy_kwargs={**kwargs, "net_arch": [8]})  # fmt: skip
        actor, learn = model.policy.actor, {"total_timesteps": 40, "log_interval": 1}
    else:
        model = algo(policy_class, env, n_steps=10, batch_size=10, n_epochs=1, seed=0,
                     policy_kwargs=kwargs)  # fmt: skip
        actor, learn = model.policy, {"total_timesteps": 40, "log_interval": 1}
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    solves: list[tuple[str, torch.Tensor]] = []  # (phase, iterations) of every solve
    plan = actor.mpc.plan

    def tallied_plan(obs, *args, **kw):
        solution = plan(obs, *args, **kw)
        solves.append((actor.phase, solution.info.iterations.clone()))
        return solution

    actor.mpc.plan = tallied_plan  # type: ignore[method-assign]
    marks: list[int] = []  # the tally at each rollout end (after the health callback)
    expected: list[dict[str, float]] = []  # what each dump must hold
    initial_mass = float(actor.mpc.dynamics.mass.detach())

    class Tally(MPCHealthCallback):
        def _on_rollout_end(self) -> None:
            super()._on_rollout_end()
            marks.append(len(solves))

    dump = model.logger.dump

    def counted_dump(step: int = 0) -> None:
        if "solver/rollout/solves" in model.logger.name_to_value:
            window = solves[dumped[-1] : marks[-1]]
            dumped.append(marks[-1])
            for phase, group in (("rollout", "solver/rollout"), ("update", "solver")):
                rows = [i for p, i in window if p == phase]
                if rows:
                    its = torch.cat(rows).double()
                    expected.append({f"{group}/solves": float(its.numel()),
                                     f"{group}/iterations_max": float(its.max()),
                                     f"{group}/iterations_mean": float(its.mean()),
                                     "step": float(step)})  # fmt: skip
        dump(step)

    dumped = [0]
    model.logger.dump = counted_dump  # type: ignore[method-assign]
    model.learn(callback=Tally(), **learn)
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    logged = {tag: {e.step: e.value for e in accumulator.Scalars(tag)}
              for tag in accumulator.Tags()["scalars"]}  # fmt: skip
    assert len(expected) >= 4
    for row in expected:
        step = int(row.pop("step"))
        for tag, value in row.items():
            assert logged[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)
    if algo is SAC:  # one env step per rollout: 9 or 10 rollout solves per dump, not one
        assert min(logged["solver/rollout/solves"].values()) >= 9.0
        assert any("solver/solves" in row for row in expected)  # SAC's updates
    for tag in ("solver/solve_time_mean", "solver/rollout/solve_time_max"):
        assert all(value > 0 for value in logged[tag].values())
    first = min(logged["params/dynamics/mass"])
    assert logged["params/dynamics/mass"][first] == pytest.approx(initial_mass)
    assert {f"params/cost/weight_{i}" for i in range(4)} <= set(logged)
