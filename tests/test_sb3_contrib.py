"""sb3-contrib with an MPC actor (mpc_policy/sb3/contrib.py): TQC and CrossQ learn the
MPC's parameters through their own critics, TRPO leaves the frozen MPC parameters out of
what it differentiates, and RecurrentPPO or a policy given to an algorithm it does not
serve is refused when the algorithm builds it, naming what to use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

from mpc_policy.sb3 import MPCActorCriticPolicy, MPCSACPolicy, learned_values

sb3_contrib = pytest.importorskip("sb3_contrib")
from sb3_contrib import TQC, TRPO, CrossQ, RecurrentPPO  # noqa: E402

from mpc_policy.sb3.contrib import MPCCrossQPolicy, MPCTQCPolicy  # noqa: E402

pytestmark = pytest.mark.sb3

PENDULUM = "mpc_policy/Pendulum-v0"


def mpc_kwargs(**more) -> dict:
    """Fresh policy kwargs (SB3's off-policy algorithms write use_sde into the dict given)."""
    return {"env_id": PENDULUM, "horizon": 3, "learn": ["cost.weights"], **more}


def mpc_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in policy.state_dict().items() if ".mpc." in f".{k}"}


def moved(before: dict[str, torch.Tensor], policy: torch.nn.Module) -> set[str]:
    after = policy.state_dict()
    return {name for name, value in before.items() if not torch.equal(value, after[name])}


@pytest.mark.slow
@pytest.mark.parametrize("algo, policy_class", [(TQC, MPCTQCPolicy), (CrossQ, MPCCrossQPolicy)])
def test_tqc_and_crossq_learn_the_mpc_through_their_critics(algo, policy_class, tmp_path):
    env = make_vec_env(PENDULUM, n_envs=1, seed=0)
    model = algo(
        policy_class,
        env,
        learning_starts=16,
        batch_size=8,
        buffer_size=200,
        learning_rate=1e-2,
        seed=0,
        policy_kwargs=mpc_kwargs(net_arch=[16]),
    )
    obs = np.stack([env.envs[0].reset(seed=i)[0] for i in range(4)])
    with torch.no_grad():
        control = model.policy.actor.mpc(torch.as_tensor(obs)).numpy()
    actions, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(actions, control, rtol=1e-4, atol=1e-4)  # box [-2, 2]
    before = mpc_state(model.policy)
    model.learn(40)
    assert moved(before, model.policy) == {"actor.mpc.cost.raw_weights"}
    summary = model.policy.actor.solver_health.summary()
    assert summary["update_solves"] > 0 and summary["rollout_solves"] > 0
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected, atol=1e-6)


@pytest.mark.slow
def test_trpo_learns_with_frozen_mpc_parameters():
    env = make_vec_env(PENDULUM, n_envs=2, seed=0)
    model = TRPO(
        MPCActorCriticPolicy, env, n_steps=16, batch_size=32, seed=0, policy_kwargs=mpc_kwargs()
    )
    names = {name for name, _ in model.policy.named_parameters()}
    assert "mpc.cost.raw_weights" in names and "mpc.dynamics.mass" not in names
    assert "mpc.dynamics.mass" in model.policy.state_dict()  # saved all the same
    before = mpc_state(model.policy)
    weights = learned_values(model.policy.mpc)["cost.weights"]
    model.learn(32)
    assert moved(before, model.policy) == {"mpc.cost.raw_weights"}
    assert not torch.equal(learned_values(model.policy.mpc)["cost.weights"], weights)


def test_recurrent_ppo_is_refused_with_what_to_use():
    env = make_vec_env(PENDULUM, n_envs=1, seed=0)
    with pytest.raises(ValueError, match=r"RecurrentPPO cannot take an MPC actor.*use PPO"):
        RecurrentPPO(MPCActorCriticPolicy, env, n_steps=8, policy_kwargs=mpc_kwargs())


@pytest.mark.parametrize(
    "algo, policy_class, match",
    [
        (TQC, MPCSACPolicy, r"MPCSACPolicy serves SAC, not TQC; use TQC\(MPCTQCPolicy"),
        (CrossQ, MPCSACPolicy, r"not CrossQ; use CrossQ\(MPCCrossQPolicy"),
        (SAC, MPCTQCPolicy, r"MPCTQCPolicy serves TQC, not SAC; use SAC\(MPCSACPolicy"),
        (PPO, MPCSACPolicy, r"not PPO; use PPO\(MPCActorCriticPolicy"),
        (TQC, MPCActorCriticPolicy, r"serves PPO and A2C and TRPO, not TQC"),
    ],
)
def test_a_policy_given_to_an_algorithm_it_does_not_serve_is_refused(algo, policy_class, match):
    env = make_vec_env(PENDULUM, n_envs=1, seed=0)
    with pytest.raises(ValueError, match=match):
        algo(policy_class, env, policy_kwargs=mpc_kwargs())
