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

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .bc_trials import run_bc_sweep, steps_per_epoch
from .plots import plot_sample_complexity
from .runner import markdown_table, write_summary
from .sweep import TrialRecord

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


def _cells(
    records: Sequence[TrialRecord], value: Callable[[TrialRecord], Any]
) -> dict[tuple[str, str, int], list[Any]]:
    """cells[(system, method, n_train)] = value(record) of each of its trials (None
    values left out), in the records' order."""
    cells: dict[tuple[str, str, int], list[Any]] = {}
    for record in records:
        item = value(record)
        if item is not None:
            c = record.config
            cells.setdefault((c["system"], c["method"], int(c["n_train"])), []).append(item)
    return cells


def _grid_table(
    cells: dict[tuple[str, str, int], list[Any]],
    methods: Sequence[str],
    cell: Callable[[list[Any]], str],
    note: str,
) -> str:
    """Markdown: one row per system and method that has cells, one column per training-set
    size, each cell ``cell(values)`` (an empty list where nothing ran); then ``note``."""
    sizes = sorted({key[2] for key in cells})
    rows = [
        [system, method] + [cell(cells.get((system, method, size), [])) for size in sizes]
        for system in dict.fromkeys(key[0] for key in cells)
        for method in methods
        if any((system, method, size) in cells for size in sizes)
    ]
    headers = ["system", "method"] + [f"n_train = {size}" for size in sizes]
    return markdown_table(headers, rows) + note


def loss_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: one row per system and method, one column per training-set size, cells
    "median [min, max]" over seeds of the test loss at the best validation epoch; then
    the steps trained (``training_table``) and the model errors (``recovery_table``)."""
    seeds = sorted({int(r.config["seed"]) for r in records})
    note = (
        f"\nTest imitation loss at the epoch of the best validation loss: median "
        f"[min, max] over the seeds run, of {seeds} (the next table counts them; - : "
        f"not run yet).\n"
    )
    losses = _cells(records, lambda r: r.result["test_loss_at_best_val"])
    tables = [_grid_table(losses, methods, _median_range, note), training_table(records, methods)]
    recovery = recovery_table(records, methods)
    return "\n".join(tables + ([recovery] if recovery else []))


def _model_error(record: TrialRecord) -> float | None:
    errors = record.result.get("model_errors") or {}
    relative = [v for k, v in errors.items() if k.startswith("dynamics_") and "_relative" in k]
    return max(relative) if relative else errors.get("cost_goal_mse")


def recovery_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: how near the truth the learned models end (last epoch), median [min, max]
    over seeds: for learners of the dynamics the largest relative error of its
    identifiable combinations (pendulum g/l and m l^2; those of the cart-pole), for learners
    of the cost the MSE of the goal. Empty when no trial learned a model."""
    cells = _cells(records, _model_error)
    if not cells:
        return ""
    note = (
        "\nModel error at the last epoch: the largest relative error of the identifiable "
        "dynamics combinations (sysid, mpc.dx, mpc.cost.dx), else the cost goal's MSE "
        "(mpc.cost); median [min, max] over seeds.\n"
    )
    return _grid_table(cells, methods, _median_range, note)


def _steps_cell(runs: list[TrialRecord]) -> str:
    if not runs:
        return ""
    per_epoch = steps_per_epoch(runs[0].config)
    done = np.median([r.result.get("epochs_done", r.result["epoch"][-1]) for r in runs])
    best = np.median([r.result["best_epoch"] for r in runs])
    early = sum(bool(r.result.get("stopped_early")) for r in runs)
    return f"{per_epoch * done:.0f} / {per_epoch * best:.0f}; {early} of {len(runs)}"


def training_table(records: Sequence[TrialRecord], methods: Sequence[str]) -> str:
    """Markdown: per system, method and training-set size, the median optimizer steps
    trained and the best validation epoch's step, and how many seeds stopped early."""
    note = (
        "\nOptimizer steps trained / step of the best validation loss (medians over "
        "seeds); seeds stopped early by patience.\n"
    )
    return _grid_table(_cells(records, lambda r: r), methods, _steps_cell, note)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Collect the datasets, run the sweep, write the table and Figure 4."""
    config, records = run_bc_sweep(__doc__.splitlines()[0], "configs/exp_imitation.yaml", argv)
    methods = list(config.sweep["method"])
    summary = loss_table(records, methods)
    path = write_summary(config, summary, records)
    figure = plot_sample_complexity(
        config.figures_dir / f"fig4_imitation_{config.profile}.png", collect_losses(records)
    )
    print(summary)
    print(f"summary: {path}\nfigure: {figure}")
    return {"losses": collect_losses(records), "records": records}


if __name__ == "__main__":
    main()
