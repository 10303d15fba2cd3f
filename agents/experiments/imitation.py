"""Section 5.3 of the paper: imitation of MPC experts on the pendulum and the cart-pole
(Figure 4).

For each system, method (nn, sysid, mpc.dx, mpc.cost, mpc.cost.dx), number of training
trajectories and seed, one learner is trained on the expert's nominal action sequences
(``mpc_policy.agents.experiments.bc_trials``); the reported number is the test imitation loss at the
epoch of the best validation loss. The table gives its median and range over seeds.

    python -m mpc_policy.agents.experiments.imitation --config configs/exp_imitation.yaml \
        --profile quick

Per-system settings (dataset, the learner's starting dynamics and cost) live under
``trial.systems.<system>`` in the config and are merged into each trial of that system;
``trial.method_overrides.<method>`` likewise (e.g. more epochs for the cheap nn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpc_policy.agents.experiments.bc_trials import run_bc_sweep
from mpc_policy.agents.experiments.plots import plot_sample_complexity
from mpc_policy.agents.experiments.runner import markdown_table, write_summary
from mpc_policy.agents.sweep import TrialRecord

__all__ = ["collect_losses", "loss_table", "main", "recovery_table", "training_table"]


def _median_range(values: Sequence[float]) -> str:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return "-"
    if array.size == 1:
        return f"{array[0]:.3g}"
    return f"{np.median(array):.3g} [{array.min():.3g}, {array.max():.3g}]"


def collect_losses(
    records: Sequence[TrialRecord],
) -> dict[str, dict[str, dict[int, list[float]]]]:
    """losses[system][method][n_train] = test losses at the best validation epoch."""
    losses: dict[str, dict[str, dict[int, list[float]]]] = {}
    for record in records:
        c = record.config
        by_size = losses.setdefault(c["system"], {}).setdefault(c["method"], {})
        by_size.setdefault(int(c["n_train"]), []).append(record.result["test_loss_at_best_val"])
    return losses


def loss_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: one row per system and method, one column per training-set size, cells
    "median [min, max]" over seeds of the test loss at the best validation epoch."""
    losses = collect_losses(records)
    sizes = sorted({int(r.config["n_train"]) for r in records})
    seeds = sorted({int(r.config["seed"]) for r in records})
    rows = []
    for system, by_method in losses.items():
        for method in methods:
            if method in by_method:
                rows.append(
                    [system, method]
                    + [_median_range(by_method[method].get(size, [])) for size in sizes]
                )
    headers = ["system", "method"] + [f"n_train = {size}" for size in sizes]
    note = (
        f"\nTest imitation loss at the epoch of the best validation loss: median "
        f"[min, max] over the seeds run, of {seeds} (the next table counts them; - : "
        f"not run yet).\n"
    )
    tables = [markdown_table(headers, rows) + note, training_table(records, methods)]
    recovery = recovery_table(records, methods)
    return "\n".join(tables + ([recovery] if recovery else []))


def recovery_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: how near the truth the learned models end (last epoch), median [min, max]
    over seeds: for learners of the dynamics the largest relative error of its
    identifiable combinations (pendulum g/l and m l^2; those of the cart-pole), for learners
    of the cost the MSE of the goal. Empty when no trial learned a model."""
    cells: dict[tuple[str, str, int], list[float]] = {}
    for record in records:
        c, errors = record.config, record.result.get("model_errors") or {}
        relative = [v for k, v in errors.items() if k.startswith("dynamics_") and "_relative" in k]
        value = max(relative) if relative else errors.get("cost_goal_mse")
        if value is not None:
            cells.setdefault((c["system"], c["method"], int(c["n_train"])), []).append(value)
    if not cells:
        return ""
    sizes = sorted({key[2] for key in cells})
    rows = []
    for system in dict.fromkeys(key[0] for key in cells):
        for method in methods:
            if any((system, method, size) in cells for size in sizes):
                rows.append(
                    [system, method]
                    + [_median_range(cells.get((system, method, size), [])) for size in sizes]
                )
    headers = ["system", "method"] + [f"n_train = {size}" for size in sizes]
    note = (
        "\nModel error at the last epoch: the largest relative error of the identifiable "
        "dynamics combinations (sysid, mpc.dx, mpc.cost.dx), else the cost goal's MSE "
        "(mpc.cost); median [min, max] over seeds.\n"
    )
    return markdown_table(headers, rows) + note


def training_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: per system, method and training-set size, the median optimizer steps
    trained and the best validation epoch's step, and how many seeds stopped early."""
    cells: dict[tuple[str, str, int], list[TrialRecord]] = {}
    for record in records:
        c = record.config
        cells.setdefault((c["system"], c["method"], int(c["n_train"])), []).append(record)
    sizes = sorted({key[2] for key in cells})
    rows = []
    for system in dict.fromkeys(key[0] for key in cells):
        for method in methods:
            if not any((system, method, size) in cells for size in sizes):
                continue
            row = [system, method]
            for size in sizes:
                runs = cells.get((system, method, size), [])
                if not runs:
                    row.append("")
                    continue
                per_epoch = -(-size // int(runs[0].config["batch_size"]))
                done = np.median([r.result.get("epochs_done", r.result["epoch"][-1]) for r in runs])
                best = np.median([r.result["best_epoch"] for r in runs])
                early = sum(bool(r.result.get("stopped_early")) for r in runs)
                row.append(
                    f"{per_epoch * done:.0f} / {per_epoch * best:.0f}; {early} of {len(runs)}"
                )
            rows.append(row)
    headers = ["system", "method"] + [f"n_train = {size}" for size in sizes]
    note = (
        "\nOptimizer steps trained / step of the best validation loss (medians over "
        "seeds); seeds stopped early by patience.\n"
    )
    return markdown_table(headers, rows) + note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Collect the datasets, run the sweep, write the table and Figure 4."""
    config, records = run_bc_sweep(__doc__.splitlines()[0], "configs/exp_imitation.yaml", argv)
    methods = list(config.sweep["method"])
    summary = loss_table(records, methods)
    path = write_summary(config, summary)
    figure = plot_sample_complexity(
        config.figures_dir / f"fig4_imitation_{config.profile}.png", collect_losses(records)
    )
    print(summary)
    print(f"summary: {path}\nfigure: {figure}")
    return {"losses": collect_losses(records), "records": records}


if __name__ == "__main__":
    main()
