"""What every experiment command shares: its YAML config with profiles, its command line,
the sweep over its trials, and the markdown table it writes.

A config file (``configs/exp_<name>.yaml``) reads

    name: lqr_imitation
    output_dir: results/experiments/lqr_imitation    # trial files, summaries, figures
    trial: {...}          # settings shared by every trial
    sweep: {seed: [0, 1]} # the grid: one trial per combination, merged into ``trial``
    report: {...}         # settings of the summary only (not part of a trial's identity)
    profiles:
      quick: {trial: {...}, sweep: {...}}            # deep-merged over the top level

``--profile NAME`` picks a profile and ``--set section.key=value`` (repeatable, the value
read as YAML) overrides a value after it, as for ``mpc-policy``: e.g.
``--set trial.epochs=5 --set 'sweep.seed=[0, 1]'``.

Relative paths are relative to the current directory (run the commands from the
repository root). Figures go to ``<output_dir>/figures`` unless ``figures_dir`` (or
``--figures-dir``) says otherwise: ``--figures-dir docs/figures`` refreshes the figures of
``docs/results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run.provenance import provenance
from ..yaml_profiles import read_profile
from .sweep import BACKENDS, TrialFn, TrialRecord, load_trial, run_sweep

__all__ = [
    "SweepConfig",
    "build_parser",
    "config_from_args",
    "load_sweep_config",
    "markdown_table",
    "provenance_note",
    "run_experiment",
    "run_trials",
    "write_summary",
]


@dataclass(frozen=True)
class SweepConfig:
    """One profile of a sweep experiment's config file, resolved.

    Attributes:
        name: the experiment's name.
        profile: the profile chosen.
        output_dir: where trial files and summaries go.
        figures_dir: where figures go.
        trial: settings shared by every trial.
        sweep: the grid, each name mapped to the list of its values.
        report: settings of the summary (changing them reruns no trial).
    """

    name: str
    profile: str
    output_dir: Path
    figures_dir: Path
    trial: dict[str, Any]
    sweep: dict[str, list[Any]]
    report: dict[str, Any]

    def trials(self) -> list[dict[str, Any]]:
        """One config per combination of the grid, in row-major order of ``sweep``."""
        names = list(self.sweep)
        combos = itertools.product(*(self.sweep[name] for name in names))
        return [{**self.trial, **dict(zip(names, values))} for values in combos]


def load_sweep_config(path: str | Path, profile: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep config file, apply one of its profiles and then ``section.key=value``
    overrides (``mpc_policy.agents.yaml_profiles``, as ``mpc-policy --profile --set``).

    Raises:
        ValueError: the file lacks a field, ``profile`` is not one of its profiles, or an
            override is not ``section.key=value`` with a YAML value.
    """
    merged, _ = read_profile(path, profile, overrides)
    missing = {"name", "output_dir", "trial", "sweep"} - set(merged)
    if missing:
        raise ValueError(f"config: {path} lacks the field(s) {sorted(missing)}")
    sweep = merged["sweep"] or {}
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep.{key}: expected a non-empty list, received {values!r}")
    output_dir = Path(merged["output_dir"])
    return SweepConfig(
        name=str(merged["name"]),
        profile=profile,
        output_dir=output_dir,
        figures_dir=Path(merged.get("figures_dir") or output_dir / "figures"),
        trial=dict(merged["trial"] or {}),
        sweep={str(k): list(v) for k, v in sweep.items()},
        report=dict(merged.get("report") or {}),
    )


def build_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    """The command line every experiment takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help="experiment YAML file")
    parser.add_argument("--profile", default="quick", help="profile of the config (quick, full)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), e.g. --set trial.epochs=5 or "
        "--set 'sweep.seed=[0, 1]'",
    )
    parser.add_argument("--backend", default="process", choices=BACKENDS)
    parser.add_argument("--workers", type=int, default=None, help="parallel trials")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (backend ray)")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument(
        "--figures-dir", default=None, help="where figures go (default: <output-dir>/figures)"
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="run nothing: summarize the trials already stored (a sweep between sittings)",
    )
    parser.add_argument(
        "--rerun-stale",
        action="store_true",
        help="run again the stored trials that ran on other solver sources (default: reuse "
        "them, flagged stale in the progress and the summary)",
    )
    return parser


def _print_progress(record: TrialRecord) -> None:
    state = "reused" if record.reused else f"ran in {record.seconds:.1f} s"
    if record.stale:
        state += " (STALE: ran on other solver sources; --rerun-stale reruns it)"
    settings = ", ".join(f"{k}={v}" for k, v in sorted(record.config.items()))
    print(f"trial {record.key} {state}: {settings}", file=sys.stderr, flush=True)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The config and profile the arguments name, with their folder overrides."""
    config = load_sweep_config(args.config, args.profile, getattr(args, "overrides", []))
    if args.output_dir is not None:
        output_dir = Path(args.output_dir)
        figures = config.figures_dir
        if figures == config.output_dir / "figures":  # the default follows the folder
            figures = output_dir / "figures"
        config = dataclasses.replace(config, output_dir=output_dir, figures_dir=figures)
    if args.figures_dir is not None:
        config = dataclasses.replace(config, figures_dir=Path(args.figures_dir))
    return config


def run_trials(
    trial_fn: TrialFn,
    config: SweepConfig,
    trials: Sequence[dict[str, Any]],
    args: argparse.Namespace,
) -> list[TrialRecord]:
    """Run (or reuse) the trials under the config's output folder, with the arguments'
    backend, workers and Ray address; progress goes to stderr. With ``--finished-only``
    only the stored trials come back, and how many are missing goes to stderr.

    Raises:
        ValueError: ``--finished-only`` and no trial of the grid has finished.
    """
    if getattr(args, "finished_only", False):
        records = [load_trial(config.output_dir, trial) for trial in trials]
        finished = [record for record in records if record is not None]
        stale = sum(record.stale for record in finished)
        print(
            f"{config.name} ({config.profile}): {len(finished)} of {len(trials)} trials "
            f"finished ({stale} stale: run on other solver sources); summarizing those",
            file=sys.stderr,
        )
        if not finished:
            raise ValueError(
                f"--finished-only: no trial of {config.name} ({config.profile}) is stored "
                f"under {config.output_dir / 'trials'}"
            )
        return finished
    return run_sweep(
        trial_fn,
        trials,
        config.output_dir,
        backend=args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        progress=_print_progress,
        rerun_stale=getattr(args, "rerun_stale", False),
    )


def run_experiment(
    trial_fn: TrialFn, args: argparse.Namespace
) -> tuple[SweepConfig, list[TrialRecord]]:
    """Load the config the arguments name and run (or reuse) all its grid's trials."""
    config = config_from_args(args)
    return config, run_trials(trial_fn, config, config.trials(), args)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats in 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def provenance_note(records: Sequence[TrialRecord]) -> str:
    """Markdown lines: which code ran the trials (package versions, solver-source hashes,
    commits, each with its count) and how many are stale against the running code."""

    def counted(key: str) -> str:
        values: dict[str, int] = {}
        for record in records:
            value = (record.provenance or {}).get(key) or "unrecorded"
            values[str(value)] = values.get(str(value), 0) + 1
        return ", ".join(f"{value} ({count})" for value, count in values.items())

    stale = sum(record.stale for record in records)
    ours = provenance()
    return (
        f"\nProvenance of the {len(records)} trials: package {counted('package_version')}; "
        f"solver sources {counted('solver_sources')}; commit {counted('git_commit')}. "
        f"Summarized by package {ours['package_version']}, solver sources "
        f"{ours['solver_sources']}, commit {ours['git_commit']}: {stale} of {len(records)} "
        "trials ran on other solver sources (stale).\n"
    )


def write_summary(
    config: SweepConfig, text: str, records: Sequence[TrialRecord] | None = None
) -> Path:
    """Write a profile's summary (markdown) to ``output_dir/summary_<profile>.md``,
    followed by the trials' ``provenance_note`` when ``records`` are given."""
    path = config.output_dir / f"summary_{config.profile}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + (provenance_note(records) if records is not None else ""))
    return path
