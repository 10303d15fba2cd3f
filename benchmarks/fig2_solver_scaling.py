"""Paper Figure 2 (section 5.1): solver cost against the number of iLQR iterations.

Fixed-point differentiation (``grad_method="exact"`` and ``"paper"``) against unrolling every
box-DDP iteration (``"unroll"``) on the pendulum task of ``bench_pendulum.py`` (batch 64,
horizon 20, float32, one thread). The number of iterations k is fixed by ``max_iter=k`` and a
tolerance no float32 step can meet, so every element runs exactly k iterations (the table
reports the iterations the solver says it used).

Measured per (method, k):
* forward and backward seconds (medians), inputs requiring grad as in training, the three
  methods' runs interleaved so that load drift on a shared host hits them alike;
* memory, with the torch profiler's allocation records (``_timing.allocation_profile``):
  "retained" is what the forward leaves allocated for the backward (the autograd graph and
  saved tensors, plus the outputs), "peak" is the most bytes live at once during forward
  and backward, both counted from the start of the forward. Only torch's CPU allocator is
  seen; that is where every tensor lives.

Writes ``<--out>/fig2_solver_scaling.{json,csv,png}`` (``--out`` defaults to a scratch
folder, runs/benchmarks); the committed results and the figure of the docs are written only
when asked: ``--out benchmarks/results --figure docs/figures/fig2_solver_scaling.png``.

Usage: ``python benchmarks/fig2_solver_scaling.py [--quick] [--out DIR] [--figure PATH]``.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from _problems import PendulumDynamics, pendulum_problem
from _timing import (
    add_output_argument,
    allocation_profile,
    markdown_table,
    median_seconds,
    set_single_thread,
    time_interleaved,
    write_results,
)
from torch import Tensor

from mpc_policy import MPC, QuadraticCost

BATCH = 64
T = 20
U_BOUND = 2.0
TINY_TOL = 1e-30
METHODS = ["exact", "paper", "unroll"]
ITERATIONS = [1, 2, 5, 10, 20, 30, 50]
QUICK_ITERATIONS = [1, 5, 10]


class Case:
    """One (method, k) point: the controller, the problem and a loss to differentiate."""

    def __init__(self, method: str, iterations: int) -> None:
        self.controller = MPC(
            3,
            1,
            T,
            u_lower=-U_BOUND,
            u_upper=U_BOUND,
            grad_method=method,
            max_iter=iterations,
            tol=TINY_TOL,
            on_unconverged="ignore",
        )
        self.dynamics = PendulumDynamics()
        self.x_init, self.C, self.c = pendulum_problem(BATCH, T, seed=0)
        gen = torch.Generator().manual_seed(1)
        self.weights = torch.randn(BATCH, T, 4, generator=gen)
        self.iterations_used = -1

    def inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """Fresh leaves x_init (B, 3), C (B, T, 4, 4), c (B, T, 4) requiring grad."""
        return tuple(t.clone().requires_grad_(True) for t in (self.x_init, self.C, self.c))  # type: ignore[return-value]

    def loss(self, inputs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """Solve and return a fixed random linear loss of the trajectory."""
        x_init, C, c = inputs
        sol = self.controller(x_init, QuadraticCost(C, c), self.dynamics)
        self.iterations_used = int(sol.info.iterations.max())
        return (self.weights[..., :3] * sol.x).sum() + (self.weights[..., 3:] * sol.u).sum()


def measure(iterations: int, repeats: int) -> list[dict[str, Any]]:
    """Times and memory of every method at k iterations, their timed runs interleaved."""
    cases = [Case(method, iterations) for method in METHODS]
    timings = time_interleaved([(case.loss, case.inputs) for case in cases], [repeats] * len(cases))
    records = []
    for method, case, (forward_times, backward_times) in zip(METHODS, cases, timings):
        inputs = case.inputs()
        loss, forward_peak, retained = allocation_profile(partial(case.loss, inputs))
        _, backward_peak, _ = allocation_profile(loss.backward)
        records.append(
            {
                "method": method,
                "iterations": iterations,
                "iterations_used": case.iterations_used,
                "forward_s": median_seconds(forward_times),
                "backward_s": median_seconds(backward_times),
                "retained_mb": retained / 2**20,
                "peak_mb": max(forward_peak, retained + backward_peak) / 2**20,
            }
        )
    return records


def plot(records: list[dict[str, Any]], figure: Path) -> None:
    """Three panels against k: forward seconds, backward seconds, peak memory."""
    panels = [
        ("forward_s", "forward time (s)"),
        ("backward_s", "backward time (s)"),
        ("peak_mb", "peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"exact": "fixed point (exact)", "paper": "fixed point (paper)", "unroll": "unrolled"}
    for axis, (key, title) in zip(axes, panels):
        for method in METHODS:
            points = [r for r in records if r["method"] == method]
            axis.plot(
                [r["iterations"] for r in points],
                [r[key] for r in points],
                marker="o",
                label=labels[method],
            )
        axis.set_xlabel("iLQR iterations")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Pendulum MPC, batch {BATCH}, horizon {T}, float32, 1 CPU thread")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few points and repeats")
    add_output_argument(parser)
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="the figure's path (default: <out>/fig2_solver_scaling.png; the docs' figure: "
        "docs/figures/fig2_solver_scaling.png)",
    )
    args = parser.parse_args()
    figure = args.figure or args.out / "fig2_solver_scaling.png"
    set_single_thread()
    iterations, repeats = (QUICK_ITERATIONS, 1) if args.quick else (ITERATIONS, 5)
    records = []
    for k in iterations:
        records += measure(k, repeats)
        print(f"measured k={k}", flush=True)
    headers = ["method", "k", "k used", "fwd s", "bwd s", "retained MiB", "peak MiB"]
    rows = [
        [
            r["method"],
            r["iterations"],
            r["iterations_used"],
            r["forward_s"],
            r["backward_s"],
            r["retained_mb"],
            r["peak_mb"],
        ]
        for r in records
    ]
    print(markdown_table(headers, rows))
    plot(records, figure)
    settings = {
        "problem": "pendulum (bench_pendulum.py)",
        "batch": BATCH,
        "horizon": T,
        "dtype": "float32",
        "threads": 1,
        "repeats": repeats,
        "statistic": "median",
        "tol": TINY_TOL,
        "memory": "torch profiler allocation records; retained = live after forward, "
        "peak = max live during forward+backward, both from the start of the forward",
    }
    json_path, _ = write_results("fig2_solver_scaling", records, settings, args.out)
    print(f"\nwrote {json_path} and {figure} (shared 2-core host, single thread: noisy)")


if __name__ == "__main__":
    main()
