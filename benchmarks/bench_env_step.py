"""Environment steps per second on one thread: ours against Gymnasium's Pendulum-v1.

    OMP_NUM_THREADS=1 python benchmarks/bench_env_step.py [--steps 20000] [--num-envs 64] \
        [--out DIR]

Single environments step through ``gymnasium.make`` (with its wrappers, as a user gets
them), the same random actions for each; the vector environments step ``num_envs`` copies
with Gymnasium's ``SyncVectorEnv`` and, where registered, the native vector environment
(``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``). Steps per second
count copies: a vector step of 64 copies is 64 steps; each number is the best of
``--repeats`` runs (the machine is shared: the best run is the least disturbed).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from _timing import add_output_argument, set_single_thread, write_results

import mpc_policy  # noqa: F401  (registers the environments)


def single(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-2, 2, size=(steps, 1)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def vector(env_id: str, steps: int, num_envs: int, mode: str) -> float:
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    env.reset(seed=0)
    rounds = max(1, steps // num_envs)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, size=(rounds, num_envs, 1)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return rounds * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    ids = ["Pendulum-v1", "mpc_policy/Pendulum-v0", "mpc_policy/CartPole-v0"]
    print(
        f"{'environment':28s} {'single':>10s} {'sync x' + str(args.num_envs):>10s} {'native':>10s}"
    )
    records = []
    for env_id in ids:
        best = max  # of the repeats
        rates = [
            best(single(env_id, args.steps) for _ in range(args.repeats)),
            best(vector(env_id, args.steps, args.num_envs, "sync") for _ in range(args.repeats)),
        ]
        native = (
            best(
                vector(env_id, args.steps, args.num_envs, "vector_entry_point")
                for _ in range(args.repeats)
            )
            if gym.spec(env_id).vector_entry_point is not None
            else float("nan")
        )
        print(f"{env_id:28s} {rates[0]:10.0f} {rates[1]:10.0f} {native:10.0f}")
        records.append({"env_id": env_id, "single": rates[0], "sync": rates[1], "native": native})
    settings = {"steps": args.steps, "num_envs": args.num_envs, "repeats": args.repeats}
    write_results("bench_env_step", records, settings, args.out)


if __name__ == "__main__":
    main()
