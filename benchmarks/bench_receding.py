"""Receding-horizon speed: ``MPCPolicy`` acting on Pendulum-v0, one solve per step.

For B pendulums (B = 1 and 16) started from seeded states, the policy plans T = 20 steps,
acts with u_1, and the environments step; 100 steps. The policy solves in float64 under
``torch.no_grad()`` with the analytic Jacobians of the environment's own dynamics module,
``on_unconverged="ignore"``, either cold (every solve starts from u = 0) or warm
(``warm_start=True``: the previous plan shifted by one step). Each configuration runs on the
compiled backend and on the torch path, interleaved step by step so load drift hits both
alike; the table gives the per-step median, mean and 90th percentile of the solve's wall
time, and the mean outer iterations per solve.

Usage: ``python benchmarks/bench_receding.py [--steps 100]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _timing import add_output_argument, markdown_table, set_single_thread, write_results

from mpc_policy import (
    MPCPolicy,
    envs,  # noqa: F401  (registers the environments)
)
from mpc_policy.envs import PendulumDynamics, pendulum_cost

ENV_ID = "mpc_policy/Pendulum-v0"
HORIZON = 20
BATCHES = [1, 16]


def make_policy(warm: bool, backend: str) -> MPCPolicy:
    return MPCPolicy(
        PendulumDynamics(dtype=torch.float64),
        pendulum_cost(dtype=torch.float64),
        HORIZON,
        u_lower=-2.0,
        u_upper=2.0,
        solve_dtype=torch.float64,
        warm_start=warm,
        jacobian="analytic",
        on_unconverged="ignore",
        backend=backend,
    )


class Runner:
    """B environments acting with one policy; ``step`` times the solve alone."""

    def __init__(self, batch: int, policy: MPCPolicy, seed: int) -> None:
        self.envs = [gym.make(ENV_ID) for _ in range(batch)]
        self.obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])
        self.policy = policy
        self.seconds: list[float] = []
        self.iterations: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            action = self.policy(torch.as_tensor(self.obs)).numpy()
        self.seconds.append(time.perf_counter() - start)
        assert self.policy.last_info is not None
        self.iterations.append(float(self.policy.last_info.iterations.double().mean()))
        self.obs = np.stack(
            [env.step(a)[0] for env, a in zip(self.envs, action.astype(np.float32))]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    records: list[dict[str, Any]] = []
    for B in BATCHES:
        for warm in (False, True):
            runners = {b: Runner(B, make_policy(warm, b), seed=B) for b in ("compiled", "torch")}
            for runner in runners.values():  # first calls (compilation, caches) untimed
                runner.step()
                runner.seconds.clear()
                runner.iterations.clear()
            for _ in range(args.steps):
                for runner in runners.values():
                    runner.step()
            for backend, runner in runners.items():
                ms = np.asarray(runner.seconds) * 1e3
                records.append(
                    {
                        "B": B,
                        "start": "warm" if warm else "cold",
                        "backend": backend,
                        "median_ms": float(np.median(ms)),
                        "mean_ms": float(ms.mean()),
                        "p90_ms": float(np.percentile(ms, 90)),
                        "mean_iterations": statistics.fmean(runner.iterations),
                    }
                )
            print(f"measured B={B} {'warm' if warm else 'cold'}", flush=True)
    headers = ["B", "start", "backend", "median ms", "mean ms", "p90 ms", "iterations/solve"]
    rows = [
        [
            r["B"],
            r["start"],
            r["backend"],
            r["median_ms"],
            r["mean_ms"],
            r["p90_ms"],
            r["mean_iterations"],
        ]
        for r in records
    ]
    print(markdown_table(headers, rows))
    settings = {
        "dtype": "float64",
        "threads": 1,
        "steps": args.steps,
        "horizon": HORIZON,
        "policy": "MPCPolicy(PendulumDynamics, pendulum_cost), analytic Jacobians, no_grad",
    }
    json_path, _ = write_results("bench_receding", records, settings, args.out)
    print(f"\nwrote {json_path} (timings on a shared 2-core host, single thread: noisy)")


if __name__ == "__main__":
    main()
