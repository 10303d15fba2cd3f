"""Run the trials of an experiment in parallel, each at most once, and gather their results.

A trial is a picklable function called on a JSON-serializable config dict,
``trial_fn(config) -> result`` (a JSON-serializable dict). Each finished trial is written
atomically to

    <out_dir>/trials/<key>.json,    key = sha256(canonical JSON of the config)[:16]

holding its config, result, run time and the provenance of the code that ran it
(``mpc_policy.agents.run.provenance``: package version, hashes of the solver's and of all
sources, git commit); a later sweep over the same out_dir loads those files instead of
running the trials again, so an interrupted sweep resumes where it stopped and a larger
profile reuses the trials it shares with a smaller one. A stored trial whose solver sources
differ from the running code's (or that records none) is loaded flagged ``stale``;
``rerun_stale=True`` runs it again instead.

Backends:
    "process": ``concurrent.futures.ProcessPoolExecutor`` on the local cores (default);
        every worker runs torch with one thread.
    "serial": in this process, one trial after the other (debugging).
    "ray": Ray tasks of one CPU each: a local Ray instance by default, or the cluster at
        ``ray_address`` (``pip install ray``; every node must be able to import the trial
        function, i.e. have this package installed). Each task runs in this process's
        working directory when the node sees it (a filesystem shared at the same path), so
        the relative paths of a config (datasets, run folders) mean the same on every node.
        Results come back to this process, which writes the trial files: the trial files
        live where this process runs, and a rerun from there (or from any machine seeing
        out_dir) reuses them. A task whose node dies is retried by Ray on another node.

The provenance of a trial is taken where it ran (on the Ray node, in the worker process).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..data.atomic import atomic_write_json
from ..run.provenance import provenance

__all__ = [
    "Backend",
    "SweepError",
    "TrialFn",
    "TrialRecord",
    "is_stale",
    "load_trial",
    "run_sweep",
    "trial_key",
]

TrialFn = Callable[[dict[str, Any]], dict[str, Any]]
Backend = Literal["process", "serial", "ray"]
BACKENDS: tuple[str, ...] = ("process", "serial", "ray")


class SweepError(RuntimeError):
    """Some trials of a sweep raised; the others finished and were saved."""


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial.

    Attributes:
        key: the hash of its config (the name of its file).
        config: the config it ran with.
        result: what the trial function returned.
        seconds: wall-clock run time of the trial function.
        reused: True when loaded from a file written by an earlier sweep.
        provenance: the code that ran it (``provenance.provenance()``); None when the
            file predates provenance records.
        stale: it ran on other solver sources than the running code's (or unknown ones).
    """

    key: str
    config: dict[str, Any]
    result: dict[str, Any]
    seconds: float
    reused: bool = False
    provenance: dict[str, Any] | None = None
    stale: bool = False


def trial_key(config: Mapping[str, Any]) -> str:
    """The 16-hex-digit hash of a config's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_path(out_dir: str | Path, key: str) -> Path:
    """Where the trial with this key is stored."""
    return Path(out_dir) / "trials" / f"{key}.json"


def load_trial(out_dir: str | Path, config: Mapping[str, Any]) -> TrialRecord | None:
    """The stored record of a config's trial, or None if it has not finished."""
    key = trial_key(config)
    path = trial_path(out_dir, key)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("config") != json.loads(json.dumps(config)):
        raise ValueError(f"{path}: stored config differs from the requested one (hash collision)")
    origin = data.get("provenance")
    return TrialRecord(
        key,
        data["config"],
        data["result"],
        data["seconds"],
        reused=True,
        provenance=origin,
        stale=is_stale(origin),
    )


def is_stale(origin: Mapping[str, Any] | None) -> bool:
    """Whether a trial with this provenance ran on other solver sources than ours."""
    return origin is None or origin.get("solver_sources") != provenance()["solver_sources"]


def _write_record(path: Path, record: TrialRecord) -> None:
    payload = {
        "config": record.config,
        "result": record.result,
        "seconds": record.seconds,
        "provenance": record.provenance,
    }
    atomic_write_json(path, payload)


def _single_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def execute_trial(trial_fn: TrialFn, config: dict[str, Any]) -> TrialRecord:
    """Run one trial with a single torch thread and time it (what every backend calls);
    the record holds the provenance of the code in the process that ran it."""
    _single_thread()
    start = time.perf_counter()
    result = trial_fn(config)
    if not isinstance(result, dict):
        raise TypeError(f"trial_fn: expected to return a dict, received {type(result)}")
    # a round trip through JSON: what is returned is what a rerun will load
    result = json.loads(json.dumps(result))
    seconds = time.perf_counter() - start
    return TrialRecord(trial_key(config), config, result, seconds, provenance=provenance())


def execute_trial_in(directory: str, trial_fn: TrialFn, config: dict[str, Any]) -> TrialRecord:
    """``execute_trial`` in ``directory`` when this machine has it (a Ray task on a node
    sharing the driver's filesystem), else in the worker's own working directory."""
    if os.path.isdir(directory):
        os.chdir(directory)
    return execute_trial(trial_fn, config)


def _run_process(
    trial_fn: TrialFn, configs: Sequence[dict[str, Any]], workers: int
) -> Iterable[tuple[dict[str, Any], Callable[[], TrialRecord]]]:
    context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_thread) as pool:
        futures: dict[Future[TrialRecord], dict[str, Any]] = {
            pool.submit(execute_trial, trial_fn, config): config for config in configs
        }
        for future in as_completed(futures):
            yield futures[future], future.result


def _run_serial(
    trial_fn: TrialFn, configs: Sequence[dict[str, Any]]
) -> Iterable[tuple[dict[str, Any], Callable[[], TrialRecord]]]:
    threads = torch.get_num_threads()
    try:
        for config in configs:
            try:
                record = execute_trial(trial_fn, config)
            except Exception as error:  # reported with the others by run_sweep
                yield config, _raiser(error)
            else:
                yield config, _constant(record)
    finally:
        torch.set_num_threads(threads)


def _run_ray(
    trial_fn: TrialFn,
    configs: Sequence[dict[str, Any]],
    workers: int,
    address: str | None,
) -> Iterable[tuple[dict[str, Any], Callable[[], TrialRecord]]]:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "backend='ray' needs Ray: pip install 'ray>=2.9' (or the 'sweep' extra)"
        ) from error
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(execute_trial_in)
        here = os.getcwd()
        pending = {remote.remote(here, trial_fn, config): config for config in configs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(done[0])
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:  # the trial raised
                # reported as the other backends report it; the remote traceback is chained
                cause = error.cause if isinstance(error.cause, Exception) else error
                if cause is not error:
                    cause.__cause__ = error
                yield config, _raiser(cause)
            except Exception as error:  # Ray itself failed (e.g. a worker node was lost)
                yield config, _raiser(error)
            else:
                yield config, _constant(record)
    finally:
        if started_here:
            ray.shutdown()


def _constant(record: TrialRecord) -> Callable[[], TrialRecord]:
    return lambda: record


def _raiser(error: BaseException) -> Callable[[], TrialRecord]:
    def get() -> TrialRecord:
        raise error

    return get


def run_sweep(
    trial_fn: TrialFn,
    configs: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    backend: Backend = "process",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[TrialRecord], None] | None = None,
    rerun_stale: bool = False,
) -> list[TrialRecord]:
    """Run every config's trial that has not finished yet; return all records in order.

    Args:
        trial_fn: module-level function ``trial_fn(config) -> dict`` (picklable).
        configs: JSON-serializable trial configs; duplicates run once.
        out_dir: the experiment's output folder (trial files go to ``out_dir/trials``).
        backend: "process" (default), "serial" or "ray".
        workers: parallel trials (default: the CPU count; at most the number to run); with
            ``ray_address`` unused (the cluster runs a trial on each free CPU).
        ray_address: a Ray cluster's address; None starts a local Ray instance.
        progress: called with each record as it becomes available (reused ones first).
        rerun_stale: run again the stored trials that ran on other solver sources (their
            files are replaced); False reuses them, flagged ``stale``.

    Returns:
        One ``TrialRecord`` per config, in the order of ``configs``.

    Raises:
        SweepError: after all other trials finished and were saved, if some trials raised
            (the first error is chained).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, received {backend!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: expected an integer >= 1 or None, received {workers!r}")
    plain = [json.loads(json.dumps(dict(config))) for config in configs]
    records: dict[str, TrialRecord] = {}
    todo: list[dict[str, Any]] = []
    queued: set[str] = set()
    for config in plain:
        key = trial_key(config)
        if key in records or key in queued:
            continue
        stored = load_trial(out_dir, config)
        if stored is None or (rerun_stale and stored.stale):
            todo.append(config)
            queued.add(key)
        else:
            records[key] = stored
            if progress is not None:
                progress(stored)

    if todo:
        count = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        if backend == "serial":
            outcomes = _run_serial(trial_fn, todo)
        elif backend == "process":
            outcomes = _run_process(trial_fn, todo, count)
        else:
            outcomes = _run_ray(trial_fn, todo, count, ray_address)
        errors: list[tuple[str, BaseException]] = []
        for config, get in outcomes:
            key = trial_key(config)
            try:
                record = get()
            except Exception as error:
                errors.append((key, error))
                continue
            _write_record(trial_path(out_dir, key), record)
            records[key] = record
            if progress is not None:
                progress(record)
        if errors:
            failures = "; ".join(f"{key}: {type(e).__name__}: {e}" for key, e in errors)
            raise SweepError(f"{len(errors)} trial(s) failed: {failures}") from errors[0][1]
    return [records[trial_key(config)] for config in plain]
