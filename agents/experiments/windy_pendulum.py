"""Section 5.4 of the paper: sysid against mpc.dx with a non-realizable expert (Figure 5).

The expert plans with the windy pendulum (the pendulum plus pivot damping and a steady
wind); both learners fit the simple pendulum's (g, m, l), which cannot represent it, from
starting points drawn per seed. sysid fits next-state transitions, mpc.dx the imitation
loss through the MPC. The paper's finding: sysid fits the transitions slightly better,
mpc.dx imitates better. Reported per method over seeds: the test imitation loss and the
test next-state (sysid) loss, at the last epoch and along training.

    python -m mpc_policy.agents.experiments.windy_pendulum \
        --config configs/exp_windy_pendulum.yaml \
        --profile quick
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .bc_trials import run_bc_sweep, steps_per_epoch
from .plots import Panel, Series, plot_curves
from .runner import markdown_table, write_summary
from .sweep import TrialRecord

__all__ = ["final_losses", "main", "optimizer_steps", "summarize"]

CURVES = (("Imitation loss (test)", "test_loss"), ("SysId loss (test)", "test_sysid_loss"))


def final_losses(records: Sequence[TrialRecord]) -> dict[str, dict[str, list[float]]]:
    """losses[method][curve] = the last epoch's value of each seed, curve in
    ("test_loss", "test_sysid_loss", "test_loss_at_best_val")."""
    losses: dict[str, dict[str, list[float]]] = {}
    for record in records:
        by_curve = losses.setdefault(record.config["method"], {})
        for _, key in CURVES:
            by_curve.setdefault(key, []).append(record.result[key][-1])
        by_curve.setdefault("test_loss_at_best_val", []).append(
            record.result["test_loss_at_best_val"]
        )
    return losses


def optimizer_steps(record: TrialRecord) -> list[int]:
    """The optimizer steps done at each evaluated epoch of a trial."""
    per_epoch = steps_per_epoch(record.config)
    return [per_epoch * int(e) for e in record.result["epoch"]]


def summarize(records: Sequence[TrialRecord]) -> str:
    """Markdown: median [min, max] over seeds of each method's final test losses, and how
    many seeds each method wins (paired by seed)."""
    losses = final_losses(records)

    def cell(values: list[float]) -> str:
        array = np.asarray(values)
        return f"{np.median(array):.4g} [{array.min():.4g}, {array.max():.4g}]"

    def trained(method: str) -> str:
        runs = [r for r in records if r.config["method"] == method]
        steps = np.asarray([optimizer_steps(r)[-1] for r in runs])
        early = sum(bool(r.result.get("stopped_early")) for r in runs)
        return f"{np.median(steps):.0f} [{steps.min()}, {steps.max()}]; {early} of {len(runs)}"

    rows = [
        [
            method,
            cell(by_curve["test_loss"]),
            cell(by_curve["test_loss_at_best_val"]),
            cell(by_curve["test_sysid_loss"]),
            trained(method),
        ]
        for method, by_curve in losses.items()
    ]
    table = markdown_table(
        [
            "method",
            "imitation loss (last epoch)",
            "imitation loss (best val epoch)",
            "sysid loss (last epoch)",
            "optimizer steps; stopped early",
        ],
        rows,
    )
    lines = [table]
    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for record in records:
        by_seed.setdefault(record.config["seed"], {})[record.config["method"]] = record.result
    paired = [r for r in by_seed.values() if {"sysid", "mpc.dx"} <= set(r)]
    if paired:
        imitation = sum(r["mpc.dx"]["test_loss"][-1] < r["sysid"]["test_loss"][-1] for r in paired)
        sysid = sum(
            r["sysid"]["test_sysid_loss"][-1] < r["mpc.dx"]["test_sysid_loss"][-1] for r in paired
        )
        lines.append(
            f"\nmpc.dx imitates better than sysid in {imitation} of {len(paired)} seeds; "
            f"sysid fits the transitions better in {sysid} of {len(paired)}.\n"
        )
    return "".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Collect the dataset, run the sweep, write the table and Figure 5."""
    config, records = run_bc_sweep(__doc__.splitlines()[0], "configs/exp_windy_pendulum.yaml", argv)
    summary = summarize(records)
    path = write_summary(config, summary, records)
    methods = list(config.sweep["method"])
    panels = []
    for title, key in CURVES:
        series = []
        for method in methods:
            runs = [r for r in records if r.config["method"] == method]
            steps = [optimizer_steps(r) for r in runs]
            same = all(s == steps[0] for s in steps)
            series.append(
                Series(method, steps[0] if same else steps, [r.result[key] for r in runs])
            )
        panels.append(Panel(title, "loss", series))
    figure = plot_curves(
        config.figures_dir / f"fig5_windy_pendulum_{config.profile}.png",
        panels,
        "optimizer steps",
    )
    print(summary)
    print(f"summary: {path}\nfigure: {figure}")
    return {"losses": final_losses(records), "records": records}


if __name__ == "__main__":
    main()
