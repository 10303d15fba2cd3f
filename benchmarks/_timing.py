"""Shared measurement helpers for the benchmark scripts: timing, tables, result files.

Every benchmark runs single-threaded (``torch.set_num_threads(1)``) so that numbers from a
shared machine are at least comparable between solvers measured in the same process. Times
are medians over repeats after warm-up calls; they are wall-clock and noisy on a busy host.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RESULTS_DIR",
    "SCRATCH_DIR",
    "add_output_argument",
    "allocation_profile",
    "environment",
    "markdown_table",
    "median_seconds",
    "set_single_thread",
    "time_calls",
    "time_interleaved",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # the committed results
# where a run writes unless asked otherwise (ignored by git: runs/)
SCRATCH_DIR = Path(__file__).resolve().parent.parent / "runs" / "benchmarks"


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """``--out DIR``: where the result files go; a scratch folder unless asked, so a run
    never overwrites the committed results in ``benchmarks/results/`` by accident."""
    parser.add_argument(
        "--out",
        type=Path,
        default=SCRATCH_DIR,
        help="folder for the result files (default: runs/benchmarks, a scratch folder; "
        "--out benchmarks/results updates the committed results)",
    )


def set_single_thread() -> None:
    """Pin torch (and BLAS via the environment, for child processes) to one thread."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)


def time_calls(call: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``call()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    if repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, received {repeats!r}")
    durations = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        if index >= warmup:
            durations.append(elapsed)
    return durations


def _forward_backward_once(
    forward: Callable[[Any], Tensor], prepare: Callable[[], Any]
) -> tuple[float, float]:
    inputs = prepare()
    start = time.perf_counter()
    loss = forward(inputs)
    middle = time.perf_counter()
    loss.backward()
    return middle - start, time.perf_counter() - middle


def time_interleaved(
    tasks: Sequence[tuple[Callable[[Any], Tensor], Callable[[], Any]]],
    repeats: Sequence[int],
    *,
    warmup: int = 1,
) -> list[tuple[list[float], list[float]]]:
    """Forward and backward seconds of several solvers, their timed runs interleaved.

    On a shared host the load drifts; spreading each task's runs evenly over the same rounds
    lets the drift hit every task alike, so their ratios stay meaningful.

    Args:
        tasks: pairs ``(forward, prepare)``: ``prepare()`` builds fresh leaf inputs (not
            timed), ``forward(inputs)`` solves and returns a scalar loss whose
            ``backward()`` reaches the inputs.
        repeats: timed runs per task (each >= 1).
        warmup: untimed runs of each task first.

    Returns:
        For each task, its forward durations and backward durations.
    """
    if len(repeats) != len(tasks) or any(r < 1 for r in repeats):
        raise ValueError(
            f"repeats: expected {len(tasks)} integers >= 1, received {list(repeats)!r}"
        )
    for forward, prepare in tasks:
        for _ in range(warmup):
            _forward_backward_once(forward, prepare)
    results: list[tuple[list[float], list[float]]] = [([], []) for _ in tasks]
    rounds = max(repeats)
    for index in range(rounds):
        for (forward, prepare), count, (forward_times, backward_times) in zip(
            tasks, repeats, results
        ):
            if (index + 1) * count // rounds > index * count // rounds:
                forward_s, backward_s = _forward_backward_once(forward, prepare)
                forward_times.append(forward_s)
                backward_times.append(backward_s)
    return results


def allocation_profile(call: Callable[[], Any]) -> tuple[Any, int, int]:
    """Peak and net bytes that torch's CPU allocator handed out while ``call()`` ran.

    The profiler (``profile_memory=True``) records every allocation and free made through
    torch's allocator; summing them in time order gives the live bytes above the level at the
    start, whose maximum is the peak. Memory outside torch (Python objects, numpy) and
    tensors allocated before the call are not counted. Do not time a profiled call.

    Returns:
        The call's result, the peak and the net (still live at the end) bytes.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = call()
    nodes = list(prof.profiler.kineto_results.experimental_event_tree())
    allocations = []
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(allocations, key=lambda item: item[0]):
        live += size
        peak = max(peak, live)
    return result, peak, live


def median_seconds(durations: Sequence[float]) -> float:
    """Median of a list of durations in seconds."""
    return float(statistics.median(durations))


def environment() -> dict[str, Any]:
    """The software and host facts a result file should carry."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for package in ("numpy", "mpc"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["git_commit"] = _git("rev-parse", "HEAD")
    info["solver_modified"] = bool(
        _git("status", "--porcelain", "--untracked-files=no", "--", "mpc_policy")
    )
    return info


def _git(*args: str) -> str:
    """Output of a git command in the repository ("" if git is unavailable)."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=RESULTS_DIR.parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return result.stdout.strip()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, records: list[dict[str, Any]], settings: dict[str, Any], out_dir: Path
) -> tuple[Path, Path]:
    """Write ``records`` to ``<out_dir>/<name>.json`` (with settings and environment) and CSV.

    Args:
        name: file stem, e.g. ``"bench_lqr"``.
        records: one flat dict per measured cell (the same keys in every dict).
        settings: how the numbers were obtained (solver options, repeats, sizes, ...).
        out_dir: the folder (``--out``; ``RESULTS_DIR`` for the committed results).

    Returns:
        The JSON and CSV paths.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    csv_path = out_dir / f"{name}.csv"
    payload = {"environment": environment(), "settings": settings, "records": records}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    fieldnames = list(dict.fromkeys(key for record in records for key in record))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(records)
    return json_path, csv_path
