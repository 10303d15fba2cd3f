"""PPO with a differentiable-MPC actor on the pendulum, starting from a wrong cost.

The actor's action mean is the first control of an MPC whose model is the environment's own
dynamics and task cost; the cost weights start wrong (by default the torque weight is 1000x
too large, so the MPC barely pushes and the pendulum falls) and PPO learns them, with the
dynamics, or both (``learn``). Logs go to tensorboard through SB3's logger: PPO's own
scalars, ``eval/mean_reward`` from ``EvalCallback``, and the solver's health and the learned
parameters from ``MPCHealthCallback`` (``solver/...``, ``params/...``). At the end it prints
the evaluation curve (deterministic return vs steps, with the learned parameters) and writes
it to ``<log_dir>/curve.csv``.

    python examples/ppo_pendulum.py                                   # 1024 steps: 10 s
    python examples/ppo_pendulum.py --config configs/ppo_pendulum.yaml  # full run: 33 s
    python examples/ppo_pendulum.py --config configs/ppo_pendulum.yaml --profile quick --set seed=1
    python examples/ppo_pendulum.py --learn "[cost.weights, dynamics]" --total-timesteps 2048
    tensorboard --logdir runs/ppo_pendulum

Every option is a field of ``Args``; ``--config`` reads a YAML file of them, ``--profile NAME``
merges one of its ``profiles`` over it and ``--set key=value`` (repeatable) overrides a field,
as for ``mpc-policy``; the other flags (values read as YAML) override the lot. Times: one
thread of a 2-core machine (the full run: 20 480 steps with 10 evaluations, 33 s of CPU once
the kernels are compiled); a progress bar shows the steps and the mean episode return.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from mpc_policy.agents.yaml_profiles import merge, parse_override, read_profile
from mpc_policy.sb3 import EvaluationCurve, MPCActorCriticPolicy, MPCHealthCallback, TqdmCallback


@dataclass
class Args:
    env_id: str = "mpc_policy/Pendulum-v0"
    # what PPO learns, by MPCPolicy parameter name ("cost.weights", "cost", "dynamics", ...)
    learn: list[str] = field(default_factory=lambda: ["cost.weights"])
    # starting values; the truth is weights (1, 1, 0.1, 0.001) on (cos, sin, th_dot, u)
    initial_values: dict[str, Any] = field(
        default_factory=lambda: {"cost.weights": [1.0, 1.0, 0.1, 1.0]}
    )
    horizon: int = 5
    total_timesteps: int = 1024
    n_envs: int = 4
    n_steps: int = 64
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 3e-3
    gamma: float = 0.98
    gae_lambda: float = 0.95
    value_layers: list[int] = field(default_factory=lambda: [64, 64])
    eval_every: int = 512  # environment steps between evaluations
    eval_episodes: int = 4
    episode_steps: int | None = 100  # None: the registered limit (200)
    seed: int = 0
    log_dir: str = "runs/ppo_pendulum"
    torch_threads: int = 1


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML file of Args fields")
    parser.add_argument("--profile", help="a profile of the --config file, e.g. quick")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a field (YAML value), e.g. --set horizon=10",
    )  # fmt: skip
    for f in dataclasses.fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=yaml.safe_load, default=None)
    namespace = vars(parser.parse_args(argv))
    config, profile, overrides = (namespace.pop(k) for k in ("config", "profile", "overrides"))
    if config is not None:
        values, _ = read_profile(config, profile, overrides)
    elif profile is not None:
        parser.error("--profile: needs --config (the file whose profiles it names)")
    else:
        values = {}
        for text in overrides:
            values = merge(values, parse_override(text))
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Args)})
    if unknown:
        raise ValueError(f"config, --set: unknown keys {unknown}; the keys are the fields of Args")
    values.update({k: v for k, v in namespace.items() if v is not None})
    return Args(**values)


def main(args: Args) -> list[dict[str, float]]:
    torch.set_num_threads(args.torch_threads)
    limit = {} if args.episode_steps is None else {"max_episode_steps": args.episode_steps}
    env = make_vec_env(args.env_id, n_envs=args.n_envs, seed=args.seed, env_kwargs=limit)
    # one sub-environment per evaluation episode: each evaluation step is one batched solve
    eval_seed = args.seed + 10_000
    eval_env = make_vec_env(
        args.env_id, n_envs=args.eval_episodes, seed=eval_seed, env_kwargs=limit
    )
    model = PPO(
        MPCActorCriticPolicy,
        env,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.learning_rate,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        policy_kwargs={
            "env_id": args.env_id,  # the MPC's model: this environment's dynamics and cost
            "horizon": args.horizon,
            "learn": args.learn,
            "initial_values": args.initial_values,
            "net_arch": args.value_layers,
        },
        tensorboard_log=args.log_dir,
        seed=args.seed,
    )
    curve = EvaluationCurve(eval_seed)
    curve.init_callback(model)
    curve.evaluate(eval_env, args.eval_episodes)
    evaluation = EvalCallback(
        eval_env,
        n_eval_episodes=args.eval_episodes,
        eval_freq=max(args.eval_every // args.n_envs, 1),
        log_path=args.log_dir,
        callback_after_eval=curve,
        verbose=0,
    )
    model.learn(
        args.total_timesteps, callback=[MPCHealthCallback(), evaluation, TqdmCallback("PPO")]
    )

    path = Path(args.log_dir) / "curve.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(curve.rows[0]))
        writer.writeheader()
        writer.writerows(curve.rows)
    for row in curve.rows:
        print("  ".join(f"{key} {value:.6g}" for key, value in row.items()))
    print(f"curve written to {path}; tensorboard --logdir {args.log_dir}")
    return curve.rows


if __name__ == "__main__":
    main(parse_args())
