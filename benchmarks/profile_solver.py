"""Where a box-DDP solve spends its time: ops and host syncs per outer iteration, share by part.

The problem of ``bench_pendulum.py`` (float32, T = 20, one thread, autograd Jacobians,
forward under ``torch.no_grad()``), at B = 1 and 256, on the compiled backend and on the
torch path. Counts come from ``torch.profiler`` (aten ops; host syncs are
``aten::_local_scalar_dense``, the op behind ``bool(tensor)`` and ``.item()``) and do not
drift with the machine's load; the shares come from wall-clock timers around the parts of
the loop (median of repeated solves).

Usage: ``python benchmarks/profile_solver.py [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import time
from collections.abc import Callable
from typing import Any

import torch
from _problems import PendulumDynamics
from _timing import add_output_argument, markdown_table, set_single_thread, write_results
from bench_pendulum import U_BOUND, T, make_problem
from torch.profiler import ProfilerActivity, profile

from mpc_policy import MPC, QuadraticCost

ilqr = importlib.import_module("mpc_policy.solve.ddp")
module_model = importlib.import_module("mpc_policy.problem.module_model")
PARTS = {
    "backward recursion": (ilqr, "_backward_pass"),
    "rollouts": (ilqr, "rollout"),
    "costs": (module_model.ModuleModel, "total_cost"),
    "linearization": (module_model.ModuleModel, "linearize"),
    "quadratization": (module_model.ModuleModel, "quadratize"),
}


class PartTimer:
    """Wall-clock seconds spent in each part, by wrapping the functions that run it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.originals: list[tuple[Any, str, Callable[..., Any]]] = []

    def __enter__(self) -> PartTimer:
        for label, (owner, name) in PARTS.items():
            original = getattr(owner, name)
            self.originals.append((owner, name, original))

            def timed(*args: Any, _f: Any = original, _label: str = label, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    self.seconds[_label] += time.perf_counter() - start

            setattr(owner, name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in self.originals:
            setattr(owner, name, original)


def measure(B: int, backend: str, repeats: int) -> dict[str, Any]:
    problem = make_problem(B, seed=B)
    dynamics = PendulumDynamics()
    cost = QuadraticCost(problem.C, problem.c)
    controller = MPC(3, 1, T, -U_BOUND, U_BOUND, on_unconverged="ignore", backend=backend)

    def solve() -> Any:
        with torch.no_grad():
            return controller(problem.x_init, cost, dynamics)

    solution = solve()
    outer = int(solution.info.iterations.max()) + 1  # the last pass confirms convergence
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        solve()
    events = prof.key_averages()
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    syncs = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    totals, parts = [], []
    for _ in range(repeats):
        with PartTimer() as timer:
            start = time.perf_counter()
            solve()
            totals.append(time.perf_counter() - start)
        parts.append(dict(timer.seconds))
    order = sorted(range(repeats), key=lambda i: totals[i])
    median = order[repeats // 2]
    total = totals[median]
    row: dict[str, Any] = {
        "B": B,
        "backend": backend,
        "outer_iterations": outer,
        "forward_ms": 1e3 * total,
        "ops_per_iteration": ops / outer,
        "syncs_per_iteration": syncs / outer,
    }
    for label in PARTS:
        row[f"share_{label}"] = parts[median].get(label, 0.0) / total
    row["share_other"] = 1.0 - sum(row[f"share_{label}"] for label in PARTS)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    records = [measure(B, b, args.repeats) for B in (1, 256) for b in ("compiled", "torch")]
    headers = ["B", "backend", "outer its", "fwd ms", "ops/it", "syncs/it"]
    headers += [f"% {label}" for label in PARTS] + ["% other"]
    rows = [
        [r["B"], r["backend"], r["outer_iterations"], r["forward_ms"]]
        + [r["ops_per_iteration"], r["syncs_per_iteration"]]
        + [100 * r[f"share_{label}"] for label in PARTS]
        + [100 * r["share_other"]]
        for r in records
    ]
    print(markdown_table(headers, rows))
    settings = {"dtype": "float32", "threads": 1, "horizon": T, "repeats": args.repeats}
    json_path, _ = write_results("profile_solver", records, settings, args.out)
    print(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
