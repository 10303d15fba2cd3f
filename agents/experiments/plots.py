"""The figures of the experiments (matplotlib, Agg backend, written as PNG files).

- ``plot_curves``: side-by-side panels of loss curves against iterations or epochs; a
  series with several runs of the same length is drawn as its median with the range of
  the runs shaded (Figures 3 and 5), runs of their own lengths (stopped early) each as a
  thin line ending in a dot.
- ``plot_sample_complexity``: one panel per environment, the test loss against the number
  of training trajectories for each method, median and range over seeds (Figure 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpc_policy.envs.extras import import_optional

# the figures are the plot extra's: a missing matplotlib is named before any experiment runs
matplotlib = import_optional("matplotlib", "plot", "the experiments' figures")
matplotlib.use("Agg")
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

__all__ = ["Panel", "Series", "plot_curves", "plot_sample_complexity"]


@dataclass(frozen=True)
class Series:
    """One labelled curve: x values and one y sequence per run.

    ``x`` is shared by all runs (then of its length) or, a sequence of sequences, one per
    run (runs of different lengths)."""

    label: str
    x: Sequence[float] | Sequence[Sequence[float]]
    runs: Sequence[Sequence[float]]

    def per_run_x(self) -> list[np.ndarray] | None:
        """One x array per run when the runs have their own x values, else None."""
        if len(self.x) and isinstance(self.x[0], Sequence | np.ndarray):
            xs = [np.asarray(x, dtype=float) for x in self.x]
            if len(xs) != len(self.runs) or any(
                x.shape != (len(y),) for x, y in zip(xs, self.runs)
            ):
                raise ValueError(f"series {self.label!r}: expected one x per run, of its length")
            return xs
        return None


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, a y label and its series (log-scale y unless ``log_y`` is
    False)."""

    title: str
    ylabel: str
    series: Sequence[Series]
    log_y: bool = True


def _draw_series(axis: plt.Axes, series: Series, color: str | None) -> None:
    xs = series.per_run_x()
    if xs is not None:
        line = None
        for k, (x, y) in enumerate(zip(xs, series.runs)):
            (line,) = axis.plot(
                x,
                y,
                label=series.label if k == 0 else None,
                color=color if line is None else line.get_color(),
                linewidth=0.9,
                alpha=0.8,
            )
            axis.plot(x[-1:], np.asarray(y, dtype=float)[-1:], "o", color=line.get_color(), ms=3)
        return
    x = np.asarray(series.x, dtype=float)
    runs = np.asarray(series.runs, dtype=float)
    if runs.shape[0] == 1:
        axis.plot(x, runs[0], label=series.label, color=color, linewidth=1.2)
        return
    (line,) = axis.plot(x, np.median(runs, axis=0), label=series.label, color=color)
    axis.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=line.get_color(), alpha=0.2)


def plot_curves(path: str | Path, panels: Sequence[Panel], xlabel: str) -> Path:
    """Panels of curves side by side, sharing the x label; returns the file written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for series in panel.series:
            _draw_series(axis, series, None)
        if panel.log_y:
            axis.set_yscale("log")
        axis.set_title(panel.title)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.grid(True, which="major", alpha=0.3)
    axes[0][-1].legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_sample_complexity(
    path: str | Path,
    losses: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]],
    ylabel: str = "test imitation loss",
) -> Path:
    """Figure 4: ``losses[env][method][n_train]`` = one loss per seed.

    Each method is a line through the medians over seeds, with the seeds' range as error
    bars, on a log-scale y axis; returns the file written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    envs = list(losses)
    # one colour and offset per method across all panels
    methods = list(dict.fromkeys(m for env in envs for m in losses[env]))
    colors = {m: f"C{k}" for k, m in enumerate(methods)}
    figure, axes = plt.subplots(1, len(envs), figsize=(5.0 * len(envs), 3.6), squeeze=False)
    for axis, env in zip(axes[0], envs):
        for method in losses[env]:
            k = methods.index(method)
            sizes = sorted(losses[env][method])
            values = [np.asarray(losses[env][method][s], dtype=float) for s in sizes]
            median = np.array([np.median(v) for v in values])
            low = median - np.array([v.min() for v in values])
            high = np.array([v.max() for v in values]) - median
            # small horizontal offsets keep the error bars of the methods apart
            offset = 1.0 + 0.04 * (k - (len(methods) - 1) / 2)
            axis.errorbar(
                np.asarray(sizes, dtype=float) * offset,
                median,
                yerr=np.stack([low, high]),
                marker="o",
                capsize=3,
                color=colors[method],
                label=method,
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(sorted({s for m in losses[env].values() for s in m}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_title(env)
        axis.set_xlabel("number of training trajectories")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="major", alpha=0.3)
    handles = [
        matplotlib.lines.Line2D([], [], color=colors[m], marker="o", label=m) for m in methods
    ]
    axes[0][-1].legend(handles=handles, fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
