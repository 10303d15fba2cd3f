"""PPO on the pendulum with a differentiable-MPC actor, over seeds, beside two references.

Three methods on the same environment (``mpc_policy/Pendulum-v0``, 200-step episodes) and
the same budget of environment steps, each over the config's seeds:

- ``mpc``: PPO learns the cost weights of an MPC actor (the environment's own dynamics and
  task cost) that start wrong: the torque weight 10^4 times too large;
- ``mpc_true``: the same MPC with the true weights, not learned: the return a perfect
  cost would give (its policy never changes, so one evaluation stands for every step);
- ``mlp``: SB3's plain ``MlpPolicy`` PPO (same rollout and update settings; the learning
  rate of the RL Zoo's pendulum PPO).

Every evaluation plays ``eval_episodes`` deterministic episodes from the same start states
(``EvaluationCurve``). Reported: the mean return over seeds per evaluation step with its
spread (standard deviation, min and max), and the learned relative torque weight.

    python -m mpc_policy.agents.experiments.ppo_pendulum --config configs/exp_ppo_pendulum.yaml \
        --profile full
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .plots import Panel, Series, plot_curves
from .runner import (
    build_parser,
    markdown_table,
    run_experiment,
    write_summary,
)
from .sweep import TrialRecord

__all__ = ["METHODS", "main", "ppo_trial", "summarize"]

METHODS = ("mpc", "mpc_true", "mlp")


def _model(config: dict[str, Any], env: Any) -> Any:
    """The PPO model of the trial's method on the vectorized ``env``."""
    from stable_baselines3 import PPO

    from mpc_policy.sb3 import MPCActorCriticPolicy

    method = config["method"]
    settings = {
        "n_steps": config["n_steps"],
        "batch_size": config["batch_size"],
        "n_epochs": config["n_epochs"],
        "gamma": config["gamma"],
        "gae_lambda": config["gae_lambda"],
        "seed": config["seed"],
    }
    if method == "mlp":
        return PPO(
            "MlpPolicy",
            env,
            learning_rate=config["mlp_learning_rate"],
            policy_kwargs={"net_arch": config["value_layers"]},
            **settings,
        )
    weights = config["initial_weights"] if method == "mpc" else config["true_weights"]
    return PPO(
        MPCActorCriticPolicy,
        env,
        learning_rate=config["learning_rate"],
        policy_kwargs={
            "env_id": config["env_id"],
            "horizon": config["horizon"],
            "learn": ["cost.weights"] if method == "mpc" else [],
            "initial_values": {"cost.weights": weights},
            "net_arch": config["value_layers"],
        },
        **settings,
    )


def ppo_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One run; the config's fields are those of ``configs/exp_ppo_pendulum.yaml``.

    Returns:
        ``steps`` and ``mean_return`` (the deterministic return averaged over the
        evaluation episodes) per evaluation, the final return, and for the MPC methods the
        final cost weights.
    """
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    from mpc_policy.sb3 import EvaluationCurve

    method = config["method"]
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, received {method!r}")
    torch.set_num_threads(1)
    env = make_vec_env(config["env_id"], n_envs=config["n_envs"], seed=config["seed"])
    eval_seed = config["seed"] + 10_000
    episodes = config["eval_episodes"]
    # one sub-environment per evaluation episode: an evaluation step is one batched solve
    eval_env = make_vec_env(config["env_id"], n_envs=episodes, seed=eval_seed)
    model = _model(config, env)
    curve = EvaluationCurve(eval_seed)
    curve.init_callback(model)
    curve.evaluate(eval_env, episodes)
    total, every = config["total_timesteps"], config["eval_every"]
    if method == "mpc_true":
        steps = list(range(0, total + 1, every))
        returns = [curve.rows[0]["mean_return"]] * len(steps)
    else:
        with tempfile.TemporaryDirectory() as log_path:
            evaluation = EvalCallback(
                eval_env,
                n_eval_episodes=episodes,
                eval_freq=max(every // config["n_envs"], 1),
                log_path=log_path,
                callback_after_eval=curve,
                verbose=0,
            )
            model.learn(total, callback=evaluation)
        steps = [int(row["steps"]) for row in curve.rows]
        returns = [row["mean_return"] for row in curve.rows]
    env.close()
    eval_env.close()
    weights = [v for k, v in curve.rows[-1].items() if k.startswith("cost.weights")]
    if method != "mlp" and not weights:
        weights = list(config["true_weights"])
    return {
        "steps": steps,
        "mean_return": returns,
        "final_return": returns[-1],
        "weights": weights or None,
    }


def _by_method(records: Sequence[TrialRecord]) -> dict[str, list[TrialRecord]]:
    grouped: dict[str, list[TrialRecord]] = {}
    for record in sorted(records, key=lambda r: (r.config["method"], r.config["seed"])):
        grouped.setdefault(record.config["method"], []).append(record)
    return grouped


def _common_curve(runs: Sequence[TrialRecord]) -> tuple[list[int], np.ndarray]:
    """The evaluation steps every run reached, and the returns (runs, steps) there."""
    steps = sorted(set.intersection(*(set(r.result["steps"]) for r in runs)))
    returns = [
        [dict(zip(r.result["steps"], r.result["mean_return"]))[s] for s in steps] for r in runs
    ]
    return steps, np.asarray(returns, dtype=float)


def summarize(records: Sequence[TrialRecord]) -> str:
    """Markdown: the return per evaluation step (mean ± std over seeds, per method), the
    final returns and, for the learned MPC, the final relative torque weight per seed."""
    grouped = _by_method(records)
    methods = [m for m in METHODS if m in grouped]
    curves = {m: _common_curve(grouped[m]) for m in methods}
    steps = sorted(set.intersection(*(set(curves[m][0]) for m in methods)))
    rows = []
    for step in steps:
        row: list[Any] = [step]
        for method in methods:
            returns = curves[method][1][:, curves[method][0].index(step)]
            row.append(f"{returns.mean():.1f} ± {returns.std():.1f}")
        rows.append(row)
    seeds = len(grouped[methods[0]])
    text = f"Deterministic return (mean ± std over {seeds} seeds) per evaluation:\n\n"
    text += markdown_table(["steps", *methods], rows)
    finals = []
    for method in methods:
        final = np.asarray([r.result["final_return"] for r in grouped[method]])
        finals.append([method, final.mean(), final.std(), final.min(), final.max()])
    text += "\nFinal return per method over seeds:\n\n"
    text += markdown_table(["method", "mean", "std", "min", "max"], finals)
    if "mpc" in grouped:
        learned = []
        for record in grouped["mpc"]:
            weights = record.result["weights"]
            learned.append([record.config["seed"], weights[3] / weights[0], record.seconds])
        text += "\nLearned MPC: torque weight relative to the cos th weight (truth 0.001):\n\n"
        text += markdown_table(["seed", "w_u / w_cos", "seconds"], learned)
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sweep, write the summary and the figure; return the final mean returns."""
    parser = build_parser(__doc__.splitlines()[0], "configs/exp_ppo_pendulum.yaml")
    config, records = run_experiment(ppo_trial, parser.parse_args(argv))
    summary = summarize(records)
    path = write_summary(config, summary, records)
    grouped = _by_method(records)
    series = []
    for method in (m for m in METHODS if m in grouped):
        steps, returns = _common_curve(grouped[method])
        series.append(Series(method, steps, returns.tolist()))
    panel = Panel("PPO on the pendulum", "deterministic return", series, log_y=False)
    figure = plot_curves(
        config.figures_dir / f"ppo_pendulum_{config.profile}.png", [panel], "environment steps"
    )
    print(summary)
    print(f"summary: {path}\nfigure: {figure}")
    return {
        method: float(np.mean([r.result["final_return"] for r in runs]))
        for method, runs in grouped.items()
    } | {"records": records}


if __name__ == "__main__":
    main()
