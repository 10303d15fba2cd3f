"""Pendulum MPC speed (the paper's task): ``mpc_policy.MPC`` against mpc.pytorch.

Pendulum-v1 dynamics (dt 0.05, g 10, m 1, l 1) on the state (cos th, sin th, th_dot),
horizon T = 20, torque in [-2, 2], cost weights (1, 1, 0.1, 0.001) on (cos, sin, th_dot, u)
towards upright, start angle ~ U(-pi/2, pi/2), velocity ~ U(-1, 1); float32, one thread,
batch sizes 1, 32 and 256. Both solvers use the same dynamics module
(``_problems.PendulumDynamics``) linearized by autograd, start from u = 0, and are checked
by the same KKT test; the forward pass is timed with inputs that require grad (the two
solvers' runs interleaved so that load drift on a shared host hits both alike), the backward
pass is ``loss.backward()`` of a fixed random linear loss of x and u reaching x_init, the
cost terms and the dynamics parameters. Our forward under ``torch.no_grad()`` (the policy's
inference path) is timed too.

mpc.pytorch runs its pendulum example's line search (decay 0.2, 5 steps) with the cheapest
(lqr_iter, eps) in ``REFERENCE_CANDIDATES`` at which every element passes the KKT test.

Usage: ``python benchmarks/bench_pendulum.py [--quick] [--no-reference]`` (run it with the
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
from _problems import (
    KKT_TOL,
    BoxLQRProblem,
    PendulumDynamics,
    kkt_residual,
    pendulum_problem,
    quadratic_cost,
)
from _reference import ReferenceSettings, load, solve_reference
from _timing import (
    add_output_argument,
    markdown_table,
    median_seconds,
    set_single_thread,
    time_calls,
    time_interleaved,
    write_results,
)
from torch import Tensor

from mpc_policy import MPC, QuadraticCost
from mpc_policy.solve.backend import compiled_available

T = 20
U_BOUND = 2.0
BATCHES = [1, 32, 256]
# mpc.pytorch seconds quoted in the issue, for orientation only (another machine).
ISSUE_REFERENCE = {
    "forward": {1: 0.162, 32: 0.518, 256: 0.873},
    "backward": {1: 0.011, 32: 0.014, 256: 0.025},
}
REFERENCE_CANDIDATES = [(10, 1e-2), (20, 1e-3), (50, 1e-3), (100, 1e-4)]
Solver = Callable[[BoxLQRProblem, PendulumDynamics], tuple[Tensor, Tensor, Tensor | None]]


def make_problem(batch: int, seed: int) -> BoxLQRProblem:
    """The pendulum batch as problem data (no affine dynamics); bounds (B, T, 1)."""
    x_init, C, c = pendulum_problem(batch, T, seed=seed)
    bound = torch.full((batch, T, 1), U_BOUND)
    return BoxLQRProblem(x_init, C, c, None, None, -bound, bound)


def kkt(problem: BoxLQRProblem, dynamics: PendulumDynamics, u: Tensor) -> Tensor:
    """(B,) relative KKT residual of controls u (B, T, 1)."""
    dynamics64 = PendulumDynamics().double()
    dynamics64.load_state_dict(dynamics.state_dict())

    def step(t: int, x: Tensor, u_t: Tensor) -> Tensor:
        return dynamics64(x, u_t)

    return kkt_residual(
        problem.x_init, u, problem.C, problem.c, step, problem.u_lower, problem.u_upper
    )


def ours(grad_method: str, backend: str = "auto") -> Solver:
    """Our MPC with default options but ``grad_method`` and ``backend``: x, u, converged.

    Non-convergence is reported in the table rather than warned about.
    """
    controller = MPC(
        3,
        1,
        T,
        u_lower=-U_BOUND,
        u_upper=U_BOUND,
        grad_method=grad_method,
        on_unconverged="ignore",
        backend=backend,
    )

    def solve(problem: BoxLQRProblem, dynamics: PendulumDynamics) -> tuple[Tensor, Tensor, Tensor]:
        sol = controller(problem.x_init, QuadraticCost(problem.C, problem.c), dynamics)
        return sol.x, sol.u, sol.info.converged

    return solve


def theirs(mpc: ModuleType, settings: ReferenceSettings) -> Solver:
    """mpc.pytorch's MPC with autograd dynamics Jacobians, prints captured: x, u, None."""

    def solve(problem: BoxLQRProblem, dynamics: PendulumDynamics) -> tuple[Tensor, Tensor, None]:
        with contextlib.redirect_stdout(io.StringIO()):
            x, u, _ = solve_reference(mpc, problem, settings, dynamics=dynamics)
        return x, u, None

    return solve


class Measurement:
    """One solver on one batch: the timed forward, and what its last run returned."""

    def __init__(self, solve: Solver, problem: BoxLQRProblem, seed: int) -> None:
        self.solve = solve
        self.problem = problem
        self.dynamics = PendulumDynamics()
        gen = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(*problem.c.shape, generator=gen)
        self.x = self.u = torch.empty(0)
        self.converged: Tensor | None = None

    def forward(self, inputs: BoxLQRProblem) -> Tensor:
        """Solve and return the linear loss of the trajectory."""
        x, u, self.converged = self.solve(inputs, self.dynamics)
        self.x, self.u = x.detach(), u.detach()
        return (self.weights[..., :3] * x).sum() + (self.weights[..., 3:] * u).sum()

    def summary(self, forward_times: list[float], backward_times: list[float]) -> dict[str, Any]:
        """Median seconds, convergence counts (KKT and own report) and the mean cost."""
        residual = kkt(self.problem, self.dynamics, self.u)
        cost = quadratic_cost(self.x, self.u, self.problem.C, self.problem.c).sum(1)
        return {
            "forward_s": median_seconds(forward_times),
            "backward_s": median_seconds(backward_times),
            "kkt_converged": int((residual <= KKT_TOL).sum()),
            "kkt_worst": float(residual.max()),
            "own_converged": None if self.converged is None else int(self.converged.sum()),
            "mean_cost": float(cost.mean()),
        }


def no_grad_forward(solve: Solver, problem: BoxLQRProblem, repeats: int) -> float:
    """Median seconds of a forward solve under ``torch.no_grad()``."""
    dynamics = PendulumDynamics()

    def call() -> None:
        with torch.no_grad():
            solve(problem, dynamics)

    return median_seconds(time_calls(call, repeats=repeats))


def reference_settings(mpc: ModuleType, problem: BoxLQRProblem) -> ReferenceSettings:
    """The cheapest candidate mpc.pytorch settings under which every element passes KKT."""
    dynamics = PendulumDynamics()
    for lqr_iter, eps in REFERENCE_CANDIDATES:
        settings = ReferenceSettings(
            lqr_iter, eps, linesearch_decay=0.2, max_linesearch_iter=5, autodiff_dynamics=True
        )
        _, u, _ = theirs(mpc, settings)(problem, dynamics)
        if bool((kkt(problem, dynamics, u.detach()) <= KKT_TOL).all()):
            return settings
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, for development")
    parser.add_argument("--no-reference", action="store_true", help="skip mpc.pytorch")
    parser.add_argument("--grad-method", default="exact", choices=["exact", "paper", "unroll"])
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    if not compiled_available():
        print("numba is not importable here: 'ours' runs the torch path too", flush=True)
    repeats_ours, repeats_theirs = (3, 1) if args.quick else (20, 5)
    mpc = None if args.no_reference else load()

    records: list[dict[str, Any]] = []
    for B in BATCHES:
        problem = make_problem(B, seed=B)
        row: dict[str, Any] = {"B": B, "T": T}
        solvers = {
            "ours": Measurement(ours(args.grad_method), problem, seed=B),
            "torchpath": Measurement(ours(args.grad_method, "torch"), problem, seed=B),
        }
        repeats = [repeats_ours, repeats_ours]
        if mpc is not None:
            settings = reference_settings(mpc, problem)
            solvers["theirs"] = Measurement(theirs(mpc, settings), problem, seed=B)
            repeats.append(repeats_theirs)
            row["theirs_lqr_iter"] = settings.lqr_iter
            row["theirs_eps"] = settings.eps
        tasks = [(s.forward, problem.requiring_grad) for s in solvers.values()]
        timings = time_interleaved(tasks, repeats)
        for (name, solver), (forward_times, backward_times) in zip(solvers.items(), timings):
            for key, value in solver.summary(forward_times, backward_times).items():
                row[f"{name}_{key}"] = value
        row["ours_no_grad_forward_s"] = no_grad_forward(
            ours(args.grad_method), problem, repeats_ours
        )
        row["torch_forward_ratio"] = row["torchpath_forward_s"] / row["ours_forward_s"]
        row["torch_backward_ratio"] = row["torchpath_backward_s"] / row["ours_backward_s"]
        if mpc is not None:
            row["forward_ratio"] = row["theirs_forward_s"] / row["ours_forward_s"]
            row["backward_ratio"] = row["theirs_backward_s"] / row["ours_backward_s"]
        row["issue_theirs_forward_s"] = ISSUE_REFERENCE["forward"][B]
        row["issue_theirs_backward_s"] = ISSUE_REFERENCE["backward"][B]
        records.append(row)
        print(f"measured B={B}", flush=True)
    report(records, mpc is not None, args.grad_method, repeats_ours, repeats_theirs, args.out)


def report(
    records: list[dict[str, Any]],
    with_reference: bool,
    grad_method: str,
    repeats_ours: int,
    repeats_theirs: int,
    out_dir: Path,
) -> None:
    """Print the markdown table and write <out_dir>/bench_pendulum.{json,csv}."""
    headers = [
        "B",
        "ours fwd s",
        "ours fwd no_grad s",
        "ours bwd s",
        "ours conv (own/KKT)",
        "ours cost",
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
            "theirs cost",
            "lqr_iter, eps",
            "fwd ratio",
            "bwd ratio",
        ]
    headers += ["issue theirs fwd s", "issue theirs bwd s"]
    rows = []
    for r in records:
        B = r["B"]
        row = [
            B,
            r["ours_forward_s"],
            r["ours_no_grad_forward_s"],
            r["ours_backward_s"],
            f"{r['ours_own_converged']}/{r['ours_kkt_converged']} of {B}",
            r["ours_mean_cost"],
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
                r["theirs_mean_cost"],
                f"{r['theirs_lqr_iter']}, {r['theirs_eps']:g}",
                r["forward_ratio"],
                r["backward_ratio"],
            ]
        row += [r["issue_theirs_forward_s"], r["issue_theirs_backward_s"]]
        rows.append(row)
    print(markdown_table(headers, rows))
    settings = {
        "ours_backend": "compiled" if compiled_available() else "torch",
        "dtype": "float32",
        "threads": 1,
        "horizon": T,
        "repeats_ours": repeats_ours,
        "repeats_theirs": repeats_theirs,
        "statistic": "median",
        "ours": f"MPC defaults, grad_method={grad_method}, on_unconverged='ignore', "
        "autograd Jacobians; backend auto (compiled kernels) and, as 'torch path', "
        "backend='torch'",
        "theirs": "mpc.MPC(QuadCost, PendulumDynamics, GradMethods.AUTO_DIFF), "
        f"linesearch_decay=0.2, max_linesearch_iter=5, (lqr_iter, eps) from {REFERENCE_CANDIDATES}",
        "kkt_tol": KKT_TOL,
    }
    json_path, _ = write_results("bench_pendulum", records, settings, out_dir)
    print(f"\nwrote {json_path} (timings on a shared 2-core host, single thread: noisy)")


if __name__ == "__main__":
    main()
