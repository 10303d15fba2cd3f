"""Box-LQR speed: ``mpc_policy.lqr_solve`` against mpc.pytorch, forward and backward.

Random strictly convex box-LQR problems (``_problems.random_box_lqr``, ~40-50% of the
optimal controls at a bound) of sizes (n, m, T) = (3, 3, 5) and (10, 4, 20) at batch sizes
1, 32 and 256, float32, single thread. The forward pass is timed with inputs that require
grad (as in training), the two solvers' runs interleaved so that load drift on a shared host
hits both alike; the backward pass is ``loss.backward()`` for a fixed random linear
loss of x and u, reaching x_init, C, c, F and f. Both solvers are checked for convergence
by the same solver-independent KKT test (``_problems.kkt_residual``); ours also reports its
own ``info.converged``.

mpc.pytorch is run with ``eps=1e-4`` and the smallest ``lqr_iter`` in (10, 20, 50) at which
every element of the cell passes the KKT test (its defaults do not converge in float32).

Usage: ``python benchmarks/bench_lqr.py [--quick] [--no-reference]`` (run it with the
``.venv-bench`` interpreter to include mpc.pytorch).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from _problems import KKT_TOL, BoxLQRProblem, affine_step, kkt_residual, random_box_lqr
from _reference import ReferenceSettings, load, solve_reference
from _timing import (
    add_output_argument,
    markdown_table,
    median_seconds,
    set_single_thread,
    time_interleaved,
    write_results,
)
from torch import Tensor

from mpc_policy import lqr_solve
from mpc_policy.solve.backend import compiled_available

SIZES = [(3, 3, 5), (10, 4, 20)]
BATCHES = [1, 32, 256]
# mpc.pytorch forward seconds quoted in the issue, for orientation only (another machine).
ISSUE_REFERENCE_FORWARD = {
    (3, 3, 5): {1: 0.016, 32: 0.055, 256: 1.84},
    (10, 4, 20): {1: 0.195, 32: 2.92, 256: 10.7},
}
REFERENCE_EPS = 1e-4
REFERENCE_ITERS = (10, 20, 50)


def loss_weights(problem: BoxLQRProblem, seed: int) -> tuple[Tensor, Tensor]:
    """Fixed random weights (B, T, n), (B, T, m) of the linear loss sum(wx * x) + sum(wu * u)."""
    B, T, n_tau = problem.c.shape
    n = problem.x_init.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(B, T, n_tau, generator=gen, dtype=problem.c.dtype)
    return weights[..., :n], weights[..., n:]


def kkt(problem: BoxLQRProblem, u: Tensor) -> Tensor:
    """(B,) relative KKT residual of controls u (B, T, m) for the problem."""
    assert problem.F is not None and problem.f is not None
    step = affine_step(problem.F.double(), problem.f.double())
    return kkt_residual(
        problem.x_init, u, problem.C, problem.c, step, problem.u_lower, problem.u_upper
    )


def ours(problem: BoxLQRProblem, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Our solve with default options: x (B, T, n), u (B, T, m), converged (B,).

    ``backend`` "auto" runs the compiled kernels where numba is installed; "torch" is the
    torch path (the reference). Non-convergence is reported in the table.
    """
    sol = lqr_solve(
        problem.x_init,
        problem.C,
        problem.c,
        problem.F,
        problem.f,
        u_lower=problem.u_lower,
        u_upper=problem.u_upper,
        on_unconverged="ignore",
        backend=backend,
    )
    return sol.x, sol.u, sol.info.converged


def ours_torch(problem: BoxLQRProblem) -> tuple[Tensor, Tensor, Tensor]:
    """Our solve on the torch path."""
    return ours(problem, backend="torch")


def theirs(mpc: ModuleType, settings: ReferenceSettings) -> Callable[..., Any]:
    """mpc.pytorch's solve with its prints captured: x (B, T, n), u (B, T, m), None."""

    def solve(problem: BoxLQRProblem) -> tuple[Tensor, Tensor, None]:
        with contextlib.redirect_stdout(io.StringIO()):
            x, u, _ = solve_reference(mpc, problem, settings)
        return x, u, None

    return solve


class Measurement:
    """One solver on one cell: the timed forward, and what its last run returned."""

    def __init__(
        self,
        solve: Callable[[BoxLQRProblem], tuple[Tensor, Tensor, Tensor | None]],
        problem: BoxLQRProblem,
        weights: tuple[Tensor, Tensor],
    ) -> None:
        self.solve = solve
        self.problem = problem
        self.weights = weights
        self.u = torch.empty(0)
        self.converged: Tensor | None = None

    def forward(self, inputs: BoxLQRProblem) -> Tensor:
        """Solve and return the linear loss of the trajectory."""
        x, u, self.converged = self.solve(inputs)
        self.u = u.detach()
        return (self.weights[0] * x).sum() + (self.weights[1] * u).sum()

    def summary(self, forward_times: list[float], backward_times: list[float]) -> dict[str, Any]:
        """Median seconds and convergence counts (KKT test and the solver's own report)."""
        residual = kkt(self.problem, self.u)
        return {
            "forward_s": median_seconds(forward_times),
            "backward_s": median_seconds(backward_times),
            "kkt_converged": int((residual <= KKT_TOL).sum()),
            "kkt_worst": float(residual.max()),
            "own_converged": None if self.converged is None else int(self.converged.sum()),
        }


def reference_settings(mpc: ModuleType, problem: BoxLQRProblem) -> ReferenceSettings:
    """The cheapest mpc.pytorch settings under which every element passes the KKT test."""
    for lqr_iter in REFERENCE_ITERS:
        settings = ReferenceSettings(lqr_iter=lqr_iter, eps=REFERENCE_EPS)
        _, u, _ = theirs(mpc, settings)(problem)
        if bool((kkt(problem, u.detach()) <= KKT_TOL).all()):
            return settings
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, for development")
    parser.add_argument("--no-reference", action="store_true", help="skip mpc.pytorch")
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    if not compiled_available():
        print("numba is not importable here: 'ours' runs the torch path too", flush=True)
    repeats_ours, repeats_theirs = (3, 1) if args.quick else (20, 5)
    mpc = None if args.no_reference else load()

    records: list[dict[str, Any]] = []
    for n, m, T in SIZES:
        for B in BATCHES:
            problem = random_box_lqr(B, n, m, T, seed=1000 * n + B)
            weights = loss_weights(problem, seed=B)
            row: dict[str, Any] = {"n": n, "m": m, "T": T, "B": B}
            row["active_fraction"] = active_fraction(problem)
            solvers = {
                "ours": Measurement(ours, problem, weights),
                "torchpath": Measurement(ours_torch, problem, weights),
            }
            repeats = [repeats_ours, repeats_ours]
            if mpc is not None:
                settings = reference_settings(mpc, problem)
                solvers["theirs"] = Measurement(theirs(mpc, settings), problem, weights)
                repeats.append(repeats_theirs)
                row["theirs_lqr_iter"] = settings.lqr_iter
            tasks = [(s.forward, problem.requiring_grad) for s in solvers.values()]
            timings = time_interleaved(tasks, repeats)
            for (name, solver), (forward_times, backward_times) in zip(solvers.items(), timings):
                for key, value in solver.summary(forward_times, backward_times).items():
                    row[f"{name}_{key}"] = value
            row["torch_forward_ratio"] = row["torchpath_forward_s"] / row["ours_forward_s"]
            row["torch_backward_ratio"] = row["torchpath_backward_s"] / row["ours_backward_s"]
            if mpc is not None:
                row["forward_ratio"] = row["theirs_forward_s"] / row["ours_forward_s"]
                row["backward_ratio"] = row["theirs_backward_s"] / row["ours_backward_s"]
            row["issue_theirs_forward_s"] = ISSUE_REFERENCE_FORWARD[(n, m, T)][B]
            records.append(row)
            print(f"measured n={n} m={m} T={T} B={B}", flush=True)
    report(records, mpc is not None, repeats_ours, repeats_theirs, args.out)


def active_fraction(problem: BoxLQRProblem) -> float:
    """Fraction of our optimal controls at a bound (within 1e-5)."""
    with torch.no_grad():
        _, u, _ = ours(problem)
    at_bound = ((u - problem.u_lower).abs() <= 1e-5) | ((u - problem.u_upper).abs() <= 1e-5)
    return float(at_bound.double().mean())


def report(
    records: list[dict[str, Any]],
    with_reference: bool,
    repeats_ours: int,
    repeats_theirs: int,
    out_dir: Path,
) -> None:
    """Print the markdown table and write <out_dir>/bench_lqr.{json,csv}."""
    headers = [
        "n,m,T",
        "B",
        "active",
        "ours fwd s",
        "ours bwd s",
        "bwd/fwd",
        "ours conv (own/KKT)",
        "torch path fwd s",
        "torch path bwd s",
        "fwd vs torch path",
        "bwd vs torch path",
    ]
    if with_reference:
        headers += [
            "theirs fwd s",
            "theirs bwd s",
            "theirs conv (KKT)",
            "lqr_iter",
            "fwd ratio",
            "bwd ratio",
        ]
    headers.append("issue theirs fwd s")
    rows = []
    for r in records:
        B = r["B"]
        row = [
            f"{r['n']},{r['m']},{r['T']}",
            B,
            r["active_fraction"],
            r["ours_forward_s"],
            r["ours_backward_s"],
            r["ours_backward_s"] / r["ours_forward_s"],
            f"{r['ours_own_converged']}/{r['ours_kkt_converged']} of {B}",
            r["torchpath_forward_s"],
            r["torchpath_backward_s"],
            r["torch_forward_ratio"],
            r["torch_backward_ratio"],
        ]
        if with_reference:
            row += [
                r["theirs_forward_s"],
                r["theirs_backward_s"],
                f"{r['theirs_kkt_converged']} of {B}",
                r["theirs_lqr_iter"],
                r["forward_ratio"],
                r["backward_ratio"],
            ]
        row.append(r["issue_theirs_forward_s"])
        rows.append(row)
    print(markdown_table(headers, rows))
    settings = {
        "ours_backend": "compiled" if compiled_available() else "torch",
        "dtype": "float32",
        "threads": 1,
        "repeats_ours": repeats_ours,
        "repeats_theirs": repeats_theirs,
        "statistic": "median",
        "ours": "lqr_solve with default MPCOptions (on_unconverged='ignore'); backend auto "
        "(compiled kernels) and, as 'torch path', backend='torch'",
        "theirs": f"mpc.MPC(QuadCost, LinDx), eps={REFERENCE_EPS}, lqr_iter from {REFERENCE_ITERS}",
        "kkt_tol": KKT_TOL,
    }
    json_path, _ = write_results("bench_lqr", records, settings, out_dir)
    print(f"\nwrote {json_path} (timings on a shared 2-core host, single thread: noisy)")


if __name__ == "__main__":
    main()
