"""Constrained cart-pole: ``MPC(constraints=TrackLimit(...))`` against the unconstrained solve.

The swing-up of ``CartPoleTrackEnv`` (true dynamics, task cost, force in [-100, 100], horizon
T = 20, float64, analytic Jacobians) on a track |p| <= 0.5, from start states drawn by the
environment's own reset (seeds 0, 1, ...), at batch sizes 1, 32 and 256. For each: the
forward time (no graph) of the unconstrained and of the constrained solve, the backward time
of a loss u.sum() (the implicit LQR against the dense KKT solve), the box-DDP iterations
(mean over elements, summed over the outer loop for the constrained solve), the outer
(multiplier) iterations, the converged fraction, the share of elements with an active row,
the largest violation of the track at the returned constrained solution, and how far the
unconstrained plans leave the track.

Two measurements behind the design (B = 32): the initial penalty ``penalty_init`` (1, 10,
100), and augmented Lagrangian against a relaxed log-barrier continuation on the same
box-DDP (cost + t sum B(-g), t = 1, 0.1, ... down to 1e-6 or 1e-8, each stage warm-started;
B the log extended quadratically below z = t, Hauser and Saccon 2006): time, iterations,
the complementarity residual max |min(-g, mu)| with the barrier's multipliers mu = t / (-g),
the violation, and the distance of its controls to the augmented-Lagrangian solution.

Usage: ``python benchmarks/bench_constrained.py [--quick]``; writes
``<--out>/bench_constrained.{json,csv}`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

import torch
from _timing import (
    add_output_argument,
    markdown_table,
    median_seconds,
    set_single_thread,
    time_calls,
    write_results,
)
from torch import Tensor, nn

from mpc_policy import MPC
from mpc_policy.envs.cartpole import CartPoleDynamics, CartPoleTrackEnv, TrackLimit, cartpole_cost
from mpc_policy.problem.constraints import complementarity

LIMIT, T, FORCE = 0.5, 20, 100.0
F64 = torch.float64


def start_states(batch: int) -> Tensor:
    """(B, 5) states of ``CartPoleTrackEnv(track_limit=LIMIT).reset(seed=i)``."""
    env = CartPoleTrackEnv(track_limit=LIMIT)
    states = []
    for seed in range(batch):
        env.reset(seed=seed)
        states.append(torch.as_tensor(env.unwrapped.state, dtype=F64))
    return torch.stack(states)


def controller(**options: Any) -> MPC:
    return MPC(5, 1, T, -FORCE, FORCE, jacobian="analytic", on_unconverged="ignore", **options)


def track_violation(x: Tensor) -> float:
    """The largest max(|p| - LIMIT, 0) over a batch of trajectories x (B, T, 5)."""
    return float((x[..., 0].abs() - LIMIT).clamp(min=0).max())


class BarrierCost(nn.Module):
    """cost + t sum_i B(-g_i), B(z) = -log z for z >= t, its quadratic extension below."""

    def __init__(self, cost: nn.Module, constraints: nn.Module, t: float) -> None:
        super().__init__()
        self.cost, self.constraints, self.t = cost, constraints, t

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        z, delta = -self.constraints(x, u), self.t
        inside = -torch.log(z.clamp(min=delta))
        outside = 0.5 * (((z - 2 * delta) / delta) ** 2 - 1.0) - math.log(delta)
        return self.cost(x, u) + self.t * torch.where(z >= delta, inside, outside).sum(-1)


def barrier_solve(x_init: Tensor, t_final: float) -> tuple[Tensor, Tensor, int, Tensor]:
    """The barrier continuation down to ``t_final``: x, u, iterations and multipliers."""
    dynamics, cost = CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64)
    limit = TrackLimit(LIMIT, dtype=F64)
    u = torch.zeros(x_init.shape[0], T, 1, dtype=F64)
    iterations, t = 0, 1.0
    while True:
        solution = controller()(x_init, BarrierCost(cost, limit, t), dynamics, u)
        u, iterations = solution.u, iterations + int(solution.info.iterations.sum())
        if t <= t_final * 1.0001:
            break
        t *= 0.1
    g = limit(solution.x, solution.u)
    return solution.x, solution.u, iterations, t / (-g).clamp(min=t)


def measure(batch: int, repeats: int) -> dict[str, Any]:
    x_init = start_states(batch)
    dynamics, cost = CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64)
    plain, constrained = controller(), controller(constraints=TrackLimit(LIMIT, dtype=F64))
    record: dict[str, Any] = {"batch": batch}
    for name, mpc in (("unconstrained", plain), ("constrained", constrained)):
        with torch.no_grad():
            seconds = time_calls(lambda mpc=mpc: mpc(x_init, cost, dynamics), repeats=repeats)
            solution = mpc(x_init, cost, dynamics)
        record[f"{name}_ms"] = 1e3 * median_seconds(seconds)
        record[f"{name}_iterations"] = float(solution.info.iterations.double().mean())
        record[f"{name}_converged"] = float(solution.info.converged.double().mean())
        leaf = x_init.clone().requires_grad_(True)
        graph = mpc(leaf, cost, dynamics)
        backward = time_calls(
            lambda graph=graph: graph.u.sum().backward(retain_graph=True), repeats=1, warmup=0
        )
        record[f"{name}_backward_ms"] = 1e3 * backward[0]
        if name == "unconstrained":
            record["unconstrained_track_violation"] = track_violation(solution.x)
        else:
            report = solution.constraints
            assert report is not None
            record["outer_mean"] = float(report.outer_iterations.double().mean())
            record["outer_max"] = int(report.outer_iterations.max())
            record["active_share"] = float(report.active.flatten(1).any(1).double().mean())
            record["violation"] = float(report.violation.max())
            record["residual"] = float(report.residual.max())
    record["ratio"] = record["constrained_ms"] / record["unconstrained_ms"]
    return record


def penalty_sweep(batch: int) -> list[dict[str, Any]]:
    x_init = start_states(batch)
    dynamics, cost = CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64)
    rows = []
    for penalty in (1.0, 10.0, 100.0):
        mpc = controller(constraints=TrackLimit(LIMIT, dtype=F64), penalty_init=penalty)
        with torch.no_grad():
            seconds = time_calls(lambda mpc=mpc: mpc(x_init, cost, dynamics), repeats=1, warmup=0)
            solution = mpc(x_init, cost, dynamics)
        assert solution.constraints is not None
        rows.append(
            {
                "penalty_init": penalty,
                "ms": 1e3 * seconds[0],
                "iterations": float(solution.info.iterations.double().mean()),
                "outer_mean": float(solution.constraints.outer_iterations.double().mean()),
                "outer_max": int(solution.constraints.outer_iterations.max()),
                "converged": float(solution.info.converged.double().mean()),
            }
        )
    return rows


def barrier_comparison(batch: int) -> list[dict[str, Any]]:
    x_init = start_states(batch)
    dynamics, cost = CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64)
    mpc = controller(constraints=TrackLimit(LIMIT, dtype=F64))
    with torch.no_grad():
        seconds = time_calls(lambda: mpc(x_init, cost, dynamics), repeats=1, warmup=0)
        reference = mpc(x_init, cost, dynamics)
    assert reference.constraints is not None
    rows = [
        {
            "method": "augmented Lagrangian",
            "ms": 1e3 * seconds[0],
            "iterations": float(reference.info.iterations.double().mean()),
            "residual": float(reference.constraints.residual.max()),
            "violation": float(reference.constraints.violation.max()),
            "u_distance": 0.0,
        }
    ]
    limit = TrackLimit(LIMIT, dtype=F64)
    for t_final in (1e-6, 1e-8):
        with torch.no_grad():
            seconds = time_calls(lambda t=t_final: barrier_solve(x_init, t), repeats=1, warmup=0)
            x, u, iterations, mu = barrier_solve(x_init, t_final)
            g = limit(x, u)
        rows.append(
            {
                "method": f"relaxed log barrier to t = {t_final:g}",
                "ms": 1e3 * seconds[0],
                "iterations": iterations / batch,
                "residual": float(complementarity(g, mu).max()),
                "violation": float(g.clamp(min=0).max()),
                "u_distance": float((u - reference.u).abs().max()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 32 only")
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    warnings.simplefilter("ignore", RuntimeWarning)
    batches = (1, 32) if args.quick else (1, 32, 256)
    measure(1, repeats=1)  # warm-up: compiled kernels from the cache
    records = [measure(b, repeats=3 if b < 256 else 1) for b in batches]
    headers = ["B", "unconstrained ms", "constrained ms", "ratio",
               "backward ms (implicit LQR / dense KKT)", "box-DDP iterations (unc. / con.)",
               "outer mean / max", "converged", "active share", "violation",
               "unconstrained plans leave the track by"]  # fmt: skip
    rows = [
        [r["batch"], r["unconstrained_ms"], r["constrained_ms"], r["ratio"],
         f"{r['unconstrained_backward_ms']:.4g} / {r['constrained_backward_ms']:.4g}",
         f"{r['unconstrained_iterations']:.4g} / {r['constrained_iterations']:.4g}",
         f"{r['outer_mean']:.3g} / {r['outer_max']}", r["constrained_converged"],
         r["active_share"], f"{r['violation']:.1e}", r["unconstrained_track_violation"]]
        for r in records
    ]  # fmt: skip
    print(markdown_table(headers, rows))
    sweep = penalty_sweep(32)
    print()
    print(markdown_table(
        ["penalty_init", "ms", "box-DDP iterations", "outer mean", "outer max", "converged"],
        [[r["penalty_init"], r["ms"], r["iterations"], r["outer_mean"], r["outer_max"],
          r["converged"]] for r in sweep],
    ))  # fmt: skip
    barrier = barrier_comparison(32)
    print()
    print(markdown_table(
        ["method (B = 32)", "ms", "box-DDP iterations", "complementarity residual",
         "violation", "max |u - u_AL|"],
        [[r["method"], r["ms"], r["iterations"], f"{r['residual']:.1e}",
          f"{r['violation']:.1e}", f"{r['u_distance']:.1e}"] for r in barrier],
    ))  # fmt: skip
    settings = {"track_limit": LIMIT, "horizon": T, "force": FORCE, "dtype": "float64"}
    for row in sweep:
        row["table"] = "penalty_init"
    for row in barrier:
        row["table"] = "barrier"
    write_results("bench_constrained", [*records, *sweep, *barrier], settings, args.out)


if __name__ == "__main__":
    main()
