"""The sweep engine (agents/sweep.py) and the experiments' config loader
(agents/experiments/runner.py): trials run once, in parallel, through every backend."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from mpc_policy.agents.experiments.runner import load_sweep_config, markdown_table
from mpc_policy.agents.experiments.sweep import SweepError, load_trial, run_sweep, trial_key


def square_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Module level (picklable): logs each call to a file, then squares x."""
    calls = Path(config["calls"])
    calls.mkdir(parents=True, exist_ok=True)
    (calls / f"{config['x']}-{uuid.uuid4().hex}").touch()
    if config.get("fail"):
        raise RuntimeError(f"trial x={config['x']} failed on purpose")
    import torch

    return {"square": config["x"] ** 2, "threads": torch.get_num_threads(), "pid": os.getpid()}


def configs(tmp_path: Path, xs: list[int], **extra: Any) -> list[dict[str, Any]]:
    return [{"x": x, "calls": str(tmp_path / "calls"), **extra} for x in xs]


def n_calls(tmp_path: Path) -> int:
    return len(list((tmp_path / "calls").iterdir()))


def test_trial_key_is_canonical():
    assert trial_key({"a": 1, "b": [1, 2]}) == trial_key({"b": [1, 2], "a": 1})
    assert trial_key({"a": 1}) != trial_key({"a": 2})
    assert len(trial_key({})) == 16


def test_serial_sweep_writes_each_trial_and_reuses_it(tmp_path):
    out = tmp_path / "out"
    first = run_sweep(square_trial, configs(tmp_path, [1, 2, 3]), out, backend="serial")
    assert [r.result["square"] for r in first] == [1, 4, 9]
    assert not any(r.reused for r in first)
    assert n_calls(tmp_path) == 3
    files = sorted(p.name for p in (out / "trials").iterdir())
    assert files == sorted(f"{trial_key(c)}.json" for c in configs(tmp_path, [1, 2, 3]))
    stored = json.loads((out / "trials" / files[0]).read_text())
    assert set(stored) == {"config", "result", "seconds", "provenance"}

    # a rerun with one more trial runs only the new one
    second = run_sweep(square_trial, configs(tmp_path, [3, 1, 2, 4]), out, backend="serial")
    assert [r.result["square"] for r in second] == [9, 1, 4, 16]
    assert [r.reused for r in second] == [True, True, True, False]
    assert n_calls(tmp_path) == 4
    assert load_trial(out, configs(tmp_path, [4])[0]) is not None
    assert load_trial(out, configs(tmp_path, [5])[0]) is None


def test_duplicate_configs_run_once(tmp_path):
    records = run_sweep(square_trial, configs(tmp_path, [2, 2]), tmp_path / "out", backend="serial")
    assert [r.result["square"] for r in records] == [4, 4]
    assert n_calls(tmp_path) == 1


@pytest.mark.slow
def test_process_sweep_runs_in_parallel_single_threaded_and_resumes(tmp_path):
    out = tmp_path / "out"
    first = run_sweep(square_trial, configs(tmp_path, [1, 2, 3, 4]), out, workers=2)
    assert [r.result["square"] for r in first] == [1, 4, 9, 16]
    assert all(r.result["threads"] == 1 for r in first)
    assert all(r.result["pid"] != os.getpid() for r in first)
    assert n_calls(tmp_path) == 4
    second = run_sweep(square_trial, configs(tmp_path, [1, 2, 3, 4]), out, workers=2)
    assert all(r.reused for r in second)
    assert [r.result for r in second] == [r.result for r in first]
    assert n_calls(tmp_path) == 4
    assert not [p for p in (out / "trials").iterdir() if p.suffix != ".json"]


def test_failed_trials_are_reported_after_the_others_are_saved(tmp_path):
    out = tmp_path / "out"
    good = configs(tmp_path, [1, 2])
    bad = configs(tmp_path, [3], fail=True)
    with pytest.raises(SweepError, match="1 trial") as info:
        run_sweep(square_trial, [good[0], bad[0], good[1]], out, backend="serial")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert load_trial(out, good[0]) is not None and load_trial(out, good[1]) is not None
    assert load_trial(out, bad[0]) is None


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        run_sweep(square_trial, [], tmp_path, backend="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        run_sweep(square_trial, [], tmp_path, workers=0)


def relative_file_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Reads a file by a path relative to the working directory (as the experiments'
    configs name their datasets), and says where it ran."""
    return {"text": Path(config["file"]).read_text(), "cwd": os.getcwd()}


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for this module's Ray tests (started once, ~10 s)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_sweep_runs_in_workers_and_resumes_across_backends(tmp_path, local_ray):
    out = tmp_path / "out"
    # a serial sitting stores two trials; the Ray sweep reuses them and runs the others
    run_sweep(square_trial, configs(tmp_path, [1, 2]), out, backend="serial")
    records = run_sweep(square_trial, configs(tmp_path, [1, 2, 3, 4]), out, backend="ray")
    assert [r.result["square"] for r in records] == [1, 4, 9, 16]
    assert [r.reused for r in records] == [True, True, False, False]
    ran = records[2:]
    assert all(r.result["threads"] == 1 and r.result["pid"] != os.getpid() for r in ran)
    assert all(r.provenance is not None and not r.stale for r in ran)
    assert n_calls(tmp_path) == 4
    again = run_sweep(square_trial, configs(tmp_path, [1, 2, 3, 4]), out, backend="process")
    assert all(r.reused for r in again) and n_calls(tmp_path) == 4


@pytest.mark.slow
def test_ray_trials_see_the_drivers_relative_paths(tmp_path, local_ray, monkeypatch):
    # the Ray instance was started elsewhere (as a cluster's nodes are): a config's relative
    # path still means what it means where the sweep command runs
    monkeypatch.chdir(tmp_path)
    Path("data.txt").write_text("stored by the driver")
    (record,) = run_sweep(relative_file_trial, [{"file": "data.txt"}], "out", backend="ray")
    assert record.result == {"text": "stored by the driver", "cwd": str(tmp_path)}
    assert (tmp_path / "out" / "trials" / f"{record.key}.json").is_file()


@pytest.mark.slow
def test_ray_failed_trial_is_reported_and_the_rest_saved(tmp_path, local_ray):
    out = tmp_path / "out"
    good = configs(tmp_path, [1, 2])
    bad = configs(tmp_path, [3], fail=True)
    # reported as the other backends report it: the trial's own error, not Ray's wrapper
    with pytest.raises(SweepError, match=r"1 trial\(s\) failed: \w+: RuntimeError: trial x=3 "):
        run_sweep(square_trial, [good[0], bad[0], good[1]], out, backend="ray")
    assert load_trial(out, good[0]) is not None and load_trial(out, good[1]) is not None
    assert load_trial(out, bad[0]) is None


CONFIG = """
name: demo
output_dir: out/demo
trial: {a: 1, b: {c: 2, d: 3}}
sweep: {seed: [0, 1], size: [10, 50]}
profiles:
  quick:
    trial: {b: {c: 5}}
    sweep: {seed: [7]}
  full: {}
"""


def test_config_profiles_merge_deeply_and_expand_the_grid(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(CONFIG)
    quick = load_sweep_config(path, "quick")
    assert quick.trials() == [
        {"a": 1, "b": {"c": 5, "d": 3}, "seed": 7, "size": 10},
        {"a": 1, "b": {"c": 5, "d": 3}, "seed": 7, "size": 50},
    ]
    assert len(load_sweep_config(path, "full").trials()) == 4
    assert quick.figures_dir == quick.output_dir / "figures"  # never a tracked folder
    with pytest.raises(ValueError, match="profile"):
        load_sweep_config(path, "huge")


def test_markdown_table_formats_floats():
    table = markdown_table(["a", "b"], [[1, 0.123456], ["x", 2.0]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 0.1235 |", "| x | 2 |"]


def test_a_trial_records_its_provenance_and_another_solver_flags_it(tmp_path):
    from mpc_policy.agents.experiments.runner import SweepConfig, write_summary
    from mpc_policy.agents.run.provenance import provenance

    out = tmp_path / "out"
    (record,) = run_sweep(square_trial, configs(tmp_path, [3]), out, backend="serial")
    path = out / "trials" / f"{record.key}.json"
    stored = json.loads(path.read_text())["provenance"]
    ours = provenance()
    assert stored == ours and set(ours) == {
        "package_version",
        "solver_sources",
        "sources",
        "git_commit",
    }
    assert ours["package_version"] and len(ours["solver_sources"]) == 16
    (again,) = run_sweep(square_trial, configs(tmp_path, [3]), out, backend="serial")
    assert again.reused and not again.stale

    # the same trial stored by another solver (and one stored before provenance existed)
    other = json.loads(path.read_text())
    other["provenance"]["solver_sources"] = "0" * 16
    path.write_text(json.dumps(other))
    (flagged,) = run_sweep(square_trial, configs(tmp_path, [3]), out, backend="serial")
    assert flagged.reused and flagged.stale and n_calls(tmp_path) == 1
    summary = SweepConfig("square", "test", out, out, {}, {}, {})
    text = write_summary(summary, "| table |\n", [flagged]).read_text()
    assert text.startswith("| table |\n")
    assert f"solver sources {'0' * 16} (1)" in text
    assert "1 of 1 trials ran on other solver sources (stale)" in text
    del other["provenance"]
    path.write_text(json.dumps(other))
    assert load_trial(out, configs(tmp_path, [3])[0]).stale
    (rerun,) = run_sweep(
        square_trial, configs(tmp_path, [3]), out, backend="serial", rerun_stale=True
    )
    assert not rerun.reused and not rerun.stale and n_calls(tmp_path) == 2
    assert json.loads(path.read_text())["provenance"] == ours


def test_sweep_commands_take_the_profile_and_set_dialect():
    from mpc_policy.agents.experiments.runner import build_parser, config_from_args

    config_file = str(Path(__file__).resolve().parents[1] / "configs" / "exp_windy_pendulum.yaml")
    parser = build_parser("windy", config_file)
    args = parser.parse_args(
        ["--profile", "test", "--set", "trial.epochs=3", "--set", "sweep.seed=[5, 6]"]
    )
    config = config_from_args(args)
    assert config.trial["epochs"] == 3 and config.trial["n_train"] == 10  # --set, profile
    assert config.sweep == {"method": ["sysid", "mpc.dx"], "seed": [5, 6]}
    with pytest.raises(ValueError, match=r"--set trial\.epochs: the value"):
        config_from_args(parser.parse_args(["--set", "trial.epochs=[1"]))
