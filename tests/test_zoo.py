"""rl-baselines3-zoo with the MPC actor (mpc_policy.sb3.zoo, configs/zoo/): training through
the zoo's own entry with the shipped hyperparameter files, and its hyperparameter tuning with
the MPC's sampler. Skipped without rl_zoo3 (the zoo extra installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3")
optuna = pytest.importorskip("optuna")

from mpc_policy.sb3 import zoo  # noqa: E402 (after the skip)

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "mpc_policy/Pendulum-v0"
TINY = {
    "ppo": ["--n-timesteps", "64", "-params", "n_envs:1", "n_steps:32", "batch_size:32"],
    "sac": ["--n-timesteps", "40", "-params", "learning_starts:20", "batch_size:16"],
}


def zoo_train(algo: str, log_folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m rl_zoo3.train` with the shipped YAML and the MPC sampler registered."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl_zoo3.train",
            "--algo",
            algo,
            "--env",
            ENV_ID,
            "--gym-packages",
            "mpc_policy.sb3.zoo",
            "--conf-file",
            str(ROOT / "configs" / "zoo" / f"{algo}.yml"),
            "--log-folder",
            str(log_folder),
            "--seed",
            "0",
            *args,
        ],
        cwd=log_folder,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def load(algo: str, path: Path):
    from stable_baselines3 import PPO, SAC

    return {"ppo": PPO, "sac": SAC}[algo].load(path)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_the_zoo_trains_the_mpc_actor_with_the_shipped_hyperparameters(tmp_path, algo):
    zoo_train(algo, tmp_path, *TINY[algo], "--eval-freq", "-1")
    (saved,) = (tmp_path / algo).glob("*/*.zip")
    model = load(algo, saved)
    assert model.policy.mpc_kwargs["env_id"] == ENV_ID
    assert model.policy.mpc_kwargs["learn"] == ["cost.weights"]
    assert model.policy.mpc_kwargs["horizon"] == {"ppo": 20, "sac": 10}[algo]
    assert model.num_timesteps >= int(TINY[algo][1])


@pytest.mark.slow
def test_zoo_optimize_samples_the_mpc_knobs_and_keeps_the_model(tmp_path):
    pytest.importorskip("pandas", reason="the zoo's optimization report needs pandas")
    storage = tmp_path / "study.log"
    zoo_train(
        "ppo",
        tmp_path,
        *TINY["ppo"],
        "-optimize",
        "--n-trials",
        "2",
        "--n-evaluations",
        "1",
        "--eval-episodes",
        "1",
        "--sampler",
        "random",
        "--pruner",
        "none",
        "--no-optim-plots",
        "--storage",
        str(storage),
        "--study-name",
        "mpc",
        "--optimization-log-path",
        str(tmp_path / "trials"),
    )
    backend = optuna.storages.journal.JournalFileBackend(str(storage))
    study = optuna.load_study(study_name="mpc", storage=optuna.storages.JournalStorage(backend))
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 2
    for trial in trials:
        assert set(trial.params) == {"horizon", "learn", "learning_rate", "one_minus_gamma"}
        # each trial's model: the sampled knobs, the YAML's model and starting weights kept
        model = load("ppo", tmp_path / "trials" / f"trial_{trial.number}" / "best_model.zip")
        kwargs = model.policy.mpc_kwargs
        assert kwargs["env_id"] == ENV_ID
        assert kwargs["initial_values"] == {"cost.weights": [1.0, 1.0, 0.1, 10.0]}
        assert kwargs["horizon"] == trial.params["horizon"]
        assert kwargs["learn"] == trial.params["learn"].split("+")
        assert model.learning_rate == pytest.approx(trial.params["learning_rate"])


def ask(policy: str, policy_kwargs: str) -> optuna.Trial:
    """A trial of a study holding the user attributes the zoo stores before optimizing."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("policy", policy)
    study.set_user_attr("policy_kwargs", policy_kwargs)
    return study.ask()


MPC_POLICY = "<class 'mpc_policy.sb3.on_policy.MPCActorCriticPolicy'>"


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3"])
def test_registered_samplers_tune_mpc_policies_and_leave_the_others(algo):
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER

    kwargs = {"env_id": ENV_ID, "learn": ["cost.weights"], "net_arch": [64]}
    sampled = HYPERPARAMS_SAMPLER[algo](ask(MPC_POLICY, str(kwargs)), 1, 1, {})
    assert set(sampled) == {"learning_rate", "gamma", "policy_kwargs"}
    policy_kwargs = sampled["policy_kwargs"]
    assert {k: policy_kwargs[k] for k in ("env_id", "net_arch")} == {
        "env_id": ENV_ID,
        "net_arch": [64],
    }
    assert policy_kwargs["horizon"] in range(5, 26, 5)
    assert "+".join(policy_kwargs["learn"]) in ("cost.weights", *zoo.LEARN_CHOICES)

    mlp = "<class 'stable_baselines3.common.policies.ActorCriticPolicy'>"
    extra = {"using_her_replay_buffer": False, "her_kwargs": {}}
    theirs = HYPERPARAMS_SAMPLER[algo](ask(mlp, "{}"), 1, 1, extra)
    assert "net_arch" in theirs["policy_kwargs"]  # the zoo's own sampler
    alias = HYPERPARAMS_SAMPLER[algo](ask("MlpPolicy", "{}"), 1, 1, extra)
    assert "net_arch" in alias["policy_kwargs"]


def test_policy_kwargs_that_are_not_plain_data_are_refused_by_name():
    trial = ask(MPC_POLICY, "{'activation_fn': <class 'torch.nn.modules.activation.Tanh'>}")
    with pytest.raises(ValueError, match=r"policy_kwargs: .* plain data"):
        zoo.sample_mpc_params(trial, zoo.experiment_policy_kwargs(trial))
    with pytest.raises(ValueError, match="--trial-id"):
        from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER

        HYPERPARAMS_CONVERTER["ppo"]({"horizon": 10, "learn": "cost"})


def test_importing_the_sb3_package_does_not_import_the_zoo():
    code = "import sys, mpc_policy.sb3; assert 'rl_zoo3' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_the_zoos_own_sampler_on_an_mpc_policy_points_at_the_mpc_sampler(algo):
    # what -optimize does without --gym-packages mpc_policy.sb3.zoo: the zoo's sampler's
    # policy_kwargs (an MLP's net_arch, no env_id) replace the YAML's
    from rl_zoo3 import hyperparams_opt
    from stable_baselines3 import PPO, SAC

    from mpc_policy.sb3 import MPCActorCriticPolicy, MPCSACPolicy

    extra = {"using_her_replay_buffer": False, "her_kwargs": {}}
    original = {"ppo": hyperparams_opt.sample_ppo_params, "sac": hyperparams_opt.sample_sac_params}
    sampled = original[algo](ask("MlpPolicy", "{}"), 1, 1, extra)
    algorithm, policy = {"ppo": (PPO, MPCActorCriticPolicy), "sac": (SAC, MPCSACPolicy)}[algo]
    with pytest.raises(ValueError, match=r"--gym-packages mpc_policy\.sb3\.zoo"):
        algorithm(policy, ENV_ID, **sampled)
