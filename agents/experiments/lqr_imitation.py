"""Section 5.2 of the paper: recover LQR dynamics by imitation of the controls (Figure 3).

Expert and learner are box-constrained LQR controllers with the same cost (identity
quadratic term, linear term c) and bounds; they differ only in the dynamics
x_{t+1} = A x_t + B u_t. The expert's are A = I + 0.2 N(0, 1), B = N(0, 1) (seed
``expert_seed``); the learner starts from another draw of the same law (seed ``seed``) and
minimizes by RMSprop, on mini-batches of fresh start states x ~ N(0, I), the imitation loss

    L = mean (u_{1:T}(x; A, B) - u_{1:T}(x; A^, B^))^2 + mean (x_{1:T}(...) - x^_{1:T}(...))^2

(the paper's ||tau - tau^||^2, averaged as in its released code) through the implicit
gradient of ``lqr_solve``. The model loss is mean (A - A^)^2 + mean (B - B^)^2.

    python -m mpc_policy.agents.experiments.lqr_imitation --config configs/exp_lqr_imitation.yaml \
        --profile quick
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mpc_policy import lqr_solve

from .plots import Panel, Series, plot_curves
from .runner import (
    build_parser,
    markdown_table,
    run_experiment,
    write_summary,
)
from .sweep import TrialRecord

__all__ = ["lqr_trial", "main", "random_dynamics", "recovered", "summarize"]


def random_dynamics(
    n_state: int, n_ctrl: int, seed: int, scale: float = 0.2
) -> tuple[Tensor, Tensor]:
    """A = I + scale N(0, 1) (n, n) and B = N(0, 1) (n, m), float64, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.eye(n_state, dtype=torch.float64) + scale * torch.randn(
        n_state, n_state, generator=generator, dtype=torch.float64
    )
    B = torch.randn(n_state, n_ctrl, generator=generator, dtype=torch.float64)
    return A, B


class LQRController:
    """The box-LQR controller shared by expert and learner, but for the dynamics.

    Args:
        n_state: state size n.
        n_ctrl: control size m.
        horizon: T.
        u_bound: controls in [-u_bound, u_bound]; None = unbounded.
        linear: (n+m,) linear cost term c (the quadratic term is the identity).
    """

    def __init__(
        self, n_state: int, n_ctrl: int, horizon: int, u_bound: float | None, linear: Tensor
    ) -> None:
        d = n_state + n_ctrl
        self.n_state, self.horizon = n_state, horizon
        self.C = torch.eye(d, dtype=torch.float64).expand(horizon, d, d)
        self.c = linear.to(torch.float64).expand(horizon, d)
        self.f = torch.zeros(horizon - 1, n_state, dtype=torch.float64)
        self.u_bound = u_bound

    def __call__(self, x_init: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Optimal x (N, T, n), u (N, T, m) and converged (N,) for x_init (N, n)."""
        F = torch.cat([A, B], dim=1).expand(self.horizon - 1, -1, -1)
        lower = None if self.u_bound is None else -self.u_bound
        upper = None if self.u_bound is None else self.u_bound
        solution = lqr_solve(
            x_init, self.C, self.c, F, self.f, lower, upper, on_unconverged="ignore"
        )
        return solution.x, solution.u, solution.info.converged


def imitation_loss(x: Tensor, u: Tensor, x_hat: Tensor, u_hat: Tensor) -> Tensor:
    """mean (u - u^)^2 + mean (x - x^)^2 over trajectories x (N, T, n), u (N, T, m)."""
    return (u - u_hat).pow(2).mean() + (x - x_hat).pow(2).mean()


def model_loss(A: Tensor, B: Tensor, A_hat: Tensor, B_hat: Tensor) -> float:
    """mean (A - A^)^2 + mean (B - B^)^2."""
    return float((A - A_hat).pow(2).mean() + (B - B_hat).pow(2).mean())


def lqr_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One learner run; the config's fields are those of ``configs/exp_lqr_imitation.yaml``.

    Returns:
        Curves ``iteration``, ``imitation_loss`` (training mini-batch loss averaged over each
        logging window), ``model_loss``; the final model loss, the imitation loss on
        ``n_test`` held-out states and the fraction of unconverged solves.
    """
    n, m, T = config["n_state"], config["n_ctrl"], config["horizon"]
    u_bound = config["u_bound"]
    batch, n_iter, log_every = config["batch_size"], config["n_iter"], config["log_every"]
    A, B = random_dynamics(n, m, config["expert_seed"], config["dynamics_scale"])
    A0, B0 = random_dynamics(n, m, config["seed"], config["dynamics_scale"])
    cost_generator = torch.Generator().manual_seed(config["expert_seed"] + 1)
    linear = config["cost_linear_std"] * torch.randn(n + m, generator=cost_generator)
    controller = LQRController(n, m, T, u_bound, linear)

    # fresh start states for every iteration; the expert's answers in large batches up
    # front (each element is solved on its own, so batching does not change them)
    data_generator = torch.Generator().manual_seed(10_000 + config["seed"])
    starts = torch.randn(n_iter * batch, n, generator=data_generator, dtype=torch.float64)
    test_generator = torch.Generator().manual_seed(20_000 + config["expert_seed"])
    test_starts = torch.randn(config["n_test"], n, generator=test_generator, dtype=torch.float64)
    with torch.no_grad():
        expert = [controller(chunk, A, B) for chunk in starts.split(4096)]
        x_star, u_star = torch.cat([e[0] for e in expert]), torch.cat([e[1] for e in expert])
        x_test, u_test, _ = controller(test_starts, A, B)

    A_hat, B_hat = A0.clone().requires_grad_(), B0.clone().requires_grad_()
    optimizer = torch.optim.RMSprop([A_hat, B_hat], lr=config["lr"])
    iterations, imitation_curve, model_curve = [], [], []
    window: list[float] = []
    unconverged = 0
    for i in range(n_iter):
        rows = slice(i * batch, (i + 1) * batch)
        x_hat, u_hat, converged = controller(starts[rows], A_hat, B_hat)
        loss = imitation_loss(x_star[rows], u_star[rows], x_hat, u_hat)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        unconverged += int((~converged).sum())
        window.append(float(loss.detach()))
        if (i + 1) % log_every == 0 or i + 1 == n_iter:
            iterations.append(i + 1)
            imitation_curve.append(float(np.mean(window)))
            model_curve.append(model_loss(A, B, A_hat.detach(), B_hat.detach()))
            window = []

    with torch.no_grad():
        x_hat, u_hat, _ = controller(test_starts, A_hat, B_hat)
        test_loss = float(imitation_loss(x_test, u_test, x_hat, u_hat))
    return {
        "iteration": iterations,
        "imitation_loss": imitation_curve,
        "model_loss": model_curve,
        "initial_model_loss": model_loss(A, B, A0, B0),
        "final_model_loss": model_curve[-1],
        "test_imitation_loss": test_loss,
        "unconverged_fraction": unconverged / (n_iter * batch),
    }


def recovered(record: TrialRecord, threshold: float) -> bool:
    """Whether a run's final model loss is below ``threshold``."""
    return bool(record.result["final_model_loss"] < threshold)


def summarize(records: Sequence[TrialRecord], threshold: float) -> str:
    """The per-run table of a sweep (markdown); recovered: final model loss < threshold."""
    rows = []
    for record in sorted(records, key=lambda r: r.config["seed"]):
        result = record.result
        rows.append(
            [
                record.config["seed"],
                result["initial_model_loss"],
                result["final_model_loss"],
                result["test_imitation_loss"],
                "yes" if recovered(record, threshold) else "no",
                f"{record.seconds:.0f}",
            ]
        )
    count = sum(recovered(r, threshold) for r in records)
    table = markdown_table(
        [
            "seed",
            "initial model loss",
            "final model loss",
            "test imitation loss",
            "recovered",
            "seconds",
        ],
        rows,
    )
    return table + (
        f"\n{count} of {len(records)} runs recovered the expert's dynamics "
        f"(final model loss < {threshold:g}).\n"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sweep, write the summary table and Figure 3; return the summary numbers."""
    parser = build_parser(__doc__.splitlines()[0], "configs/exp_lqr_imitation.yaml")
    config, records = run_experiment(lqr_trial, parser.parse_args(argv))
    threshold = float(config.report["recovery_threshold"])
    summary = summarize(records, threshold)
    path = write_summary(config, summary, records)
    ordered = sorted(records, key=lambda r: r.config["seed"])
    panels = [
        Panel(
            title,
            key.replace("_", " "),
            [
                Series(f"seed {r.config['seed']}", r.result["iteration"], [r.result[key]])
                for r in ordered
            ],
        )
        for title, key in (("Model loss", "model_loss"), ("Imitation loss", "imitation_loss"))
    ]
    figure = plot_curves(
        config.figures_dir / f"fig3_lqr_imitation_{config.profile}.png", panels, "iteration"
    )
    print(summary)
    print(f"summary: {path}\nfigure: {figure}")
    finals = [r.result["final_model_loss"] for r in records]
    return {
        "recovered": sum(recovered(r, threshold) for r in records),
        "runs": len(records),
        "best_final_model_loss": min(finals) if finals else math.nan,
        "records": records,
    }


if __name__ == "__main__":
    main()
