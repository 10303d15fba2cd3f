"""The ``mpc-policy`` command: each subcommand end to end on a tiny budget, resumption of a
stopped and of a killed training run, and error messages."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpc_policy.agents.run import cli
from mpc_policy.agents.run.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "pendulum_dx.yaml")
TINY = [
    "--profile",
    "quick",
    "--set",
    "data.n_train=4",
    "--set",
    "data.n_val=2",
    "--set",
    "data.n_test=2",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.epochs=2",
    "--set",
    "evaluate.episodes=1",
    "--set",
    "evaluate.max_episode_steps=6",
]


def tiny(command: str, run_dir: Path, *extra: str) -> list[str]:
    return [command, CONFIG, *TINY, "--set", f"output_dir={run_dir}", *extra]


def logged_steps(run_dir: Path, tag: str) -> list[int]:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_the_console_script_is_declared():
    scripts = entry_points(group="console_scripts")
    assert [s.value for s in scripts if s.name == "mpc-policy"] == [
        "mpc_policy.agents.run.cli:main"
    ]


def test_run_collects_trains_evaluates_and_renders(tmp_path, capsys):
    assert main(tiny("run", tmp_path, "--gif", "--set", "evaluate.gif_every=3")) == 0
    out = capsys.readouterr().out
    for text in ("dataset.npz", "tensorboard --logdir", "last.pt", "best.pt", "results.json"):
        assert text in out
    # the summary says whether it worked: learned against true g/l and m l^2, policy
    # against expert
    assert "identifiable parameters: g_over_l" in out and "(true 10," in out
    assert "m_l2" in out and "(true 1," in out
    assert out.count("verdict: ") == 1 and "vs expert" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train"]["epochs_done"] == 2
    evaluation = results["evaluation"]
    assert len(evaluation["policy"]["returns"]) == len(evaluation["expert"]["returns"]) == 1
    assert 0.0 <= evaluation["policy"]["success_rate"] <= 1.0
    with Image.open(evaluation["policy"]["gif"]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3  # steps 0, 3 and the final state


def test_subcommands_one_by_one_with_a_stopped_and_resumed_training(tmp_path, capsys):
    assert main(tiny("collect", tmp_path)) == 0
    assert "collected 8 expert steps" in capsys.readouterr().out
    assert main(tiny("collect", tmp_path)) == 0
    assert "reused" in capsys.readouterr().out
    assert main(tiny("collect", tmp_path, "--restart")) == 0
    assert "collected 8 expert steps" in capsys.readouterr().out
    assert main(tiny("train", tmp_path, "--stop-after", "1")) == 0
    assert json.loads((tmp_path / "results.json").read_text())["train"]["epochs_done"] == 1
    assert main(tiny("train", tmp_path)) == 0
    assert json.loads((tmp_path / "results.json").read_text())["train"]["epochs_done"] == 2
    assert logged_steps(tmp_path, "loss/val") == [0, 1, 2]
    assert main(tiny("evaluate", tmp_path, "--checkpoint", "last")) == 0
    assert "policy  return" in capsys.readouterr().out


def test_each_command_builds_the_learner_once_and_loads_the_dataset_once(tmp_path, monkeypatch):
    """``pipeline.run`` sequences the steps for every command: one learner, built when the
    config is checked, is trained and then evaluated; the dataset file is read once."""
    from mpc_policy import MPCPolicy

    built: list[int] = []
    loaded: list[str] = []
    init, load = MPCPolicy.__init__, np.load

    def counting_init(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    def counting_load(file, *args, **kwargs):
        loaded.append(Path(file).name)
        return load(file, *args, **kwargs)

    monkeypatch.setattr(MPCPolicy, "__init__", counting_init)
    monkeypatch.setattr(np, "load", counting_load)
    # collected afresh, reused with the training done, then each step alone
    for command, builds, loads in (
        ("run", 1, 1),
        ("run", 1, 1),
        ("collect", 1, 1),
        ("train", 1, 1),
        ("evaluate", 1, 0),
    ):
        built.clear(), loaded.clear()
        assert main(tiny(command, tmp_path)) == 0
        assert (command, len(built), loaded) == (command, builds, ["dataset.npz"] * loads)


@pytest.mark.slow
def test_a_killed_training_run_resumes_where_it_stopped(tmp_path):
    args = tiny("train", tmp_path, "--set", "train.epochs=30")
    assert main(tiny("collect", tmp_path)) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "mpc_policy.agents.run.cli", *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    stopped = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= stopped < 30
    assert main(tiny("train", tmp_path, "--set", f"train.epochs={stopped + 2}")) == 0
    assert (
        json.loads((tmp_path / "results.json").read_text())["train"]["epochs_done"] == stopped + 2
    )
    assert logged_steps(tmp_path, "loss/val") == list(range(stopped + 3))  # each epoch once


# what makes a command line slow to answer: none of these may load for ``--help``
HEAVY_MODULES = (
    "torch",
    "numba",
    "scipy",
    "matplotlib",
    "tensorboard",
    "stable_baselines3",
    "tqdm",
    "yaml",
    "PIL",
)


def _loaded_by(argv: list[str]) -> tuple[list[str], list[str]]:
    """The ``mpc_policy.agents`` modules and the heavy modules a fresh interpreter has
    loaded after ``mpc-policy ARGV`` (which exits, as ``--help`` does)."""
    lines = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from mpc_policy.agents.run.cli import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('mpc_policy.agents')))\n"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return eval(lines[-2]), eval(lines[-1])


def test_help_is_quick():
    """``--help`` imports neither torch nor the learning stack (``import mpc_policy`` loads
    its names lazily). Measured by what gets imported, not in seconds, which a busy host
    stretches."""
    agents, heavy = _loaded_by(["--help"])
    assert agents == ["mpc_policy.agents", "mpc_policy.agents.run", "mpc_policy.agents.run.cli"]
    assert heavy == []
    agents, heavy = _loaded_by(["train", "--help"])
    assert (
        agents == ["mpc_policy.agents", "mpc_policy.agents.run", "mpc_policy.agents.run.cli"]
        and heavy == []
    )


def test_the_usage_advertises_only_options_that_parse(capsys):
    lines = [line.split("#")[0] for line in cli.__doc__.splitlines() if "mpc-policy " in line]
    commands = {"run", "collect", "train", "evaluate", "warmup"}
    assert {line.split()[1] for line in lines} == {*commands, "--version"}
    for line in lines:
        command = line.split()[1]
        if command not in commands:
            continue
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        listed = capsys.readouterr().out
        for option in re.findall(r"--[a-z-]+", line):
            assert option in listed, (command, option)


def test_errors_are_reported_with_their_cause(tmp_path, capsys):
    assert main(tiny("train", tmp_path, "--set", "train.epoch=3")) == 2
    assert "train.epoch: unknown config key" in capsys.readouterr().err
    assert main(["run", CONFIG, "--profile", "fast"]) == 2
    assert "'fast' is not in" in capsys.readouterr().err
    assert main(tiny("train", tmp_path)) == 2
    assert "no such dataset file" in capsys.readouterr().err
    (tmp_path / "dataset.npz").write_bytes(np.arange(10).tobytes())
    assert main(tiny("train", tmp_path)) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert main(tiny("collect", tmp_path)) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_stop_after_below_one_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(tiny("collect", tmp_path)) == 0
    capsys.readouterr()
    for value in ("-1", "0", "two"):
        with pytest.raises(SystemExit) as done:
            main(tiny("train", tmp_path, "--stop-after", value))
        assert done.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument --stop-after: expected an integer >= 1, received {value!r}" in last
        assert not (tmp_path / "checkpoints").exists()


def test_the_library_refuses_stop_after_below_one_too(tmp_path):
    from mpc_policy.agents.config import load_config
    from mpc_policy.agents.run import pipeline

    config = load_config(CONFIG, "quick", [f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="stop_after: expected None or an integer >= 1"):
        pipeline.train(config, stop_after=0)
    assert not (tmp_path / "checkpoints").exists()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_paths_that_cannot_be_used_end_in_one_line_naming_the_setting(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    assert main(tiny("collect", a_file)) == 2
    assert "output_dir: expected a folder path" in _one_line_error(capsys)
    assert main(tiny("collect", a_file / "run")) == 2
    assert f"where {str(a_file)!r} is a file" in _one_line_error(capsys)
    assert main(tiny("collect", tmp_path / "run", "--set", f"data.path={a_folder}")) == 2
    assert "data.path: expected a dataset file path, received the folder" in _one_line_error(capsys)
    assert main(tiny("evaluate", tmp_path / "run", "--checkpoint", str(a_folder))) == 2
    assert "checkpoint: expected a checkpoint file, received the folder" in _one_line_error(capsys)
    assert a_file.read_text() == "not a folder" and not any(a_folder.iterdir())


def test_a_read_only_output_folder_ends_in_one_line(tmp_path, capsys, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):  # what a read-only folder answers (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert main(tiny("collect", tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "cannot write" in err and "Permission denied" in err and "output_dir" in err


class _FullDisk:
    """A binary file on a disk with 2 kB left: small files (config.yaml, results.json)
    fit, a dataset or a checkpoint fills the disk halfway through."""

    def __init__(self, file):
        self.file = file
        self.left = 2048

    def write(self, data):
        data = bytes(data)
        written = self.file.write(data[: self.left])
        self.left -= written
        if written < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_keeps_the_previous_dataset_and_checkpoint(tmp_path, capsys, monkeypatch):
    assert main(tiny("collect", tmp_path)) == 0
    assert main(tiny("train", tmp_path, "--stop-after", "1")) == 0
    capsys.readouterr()
    kept = {
        path: path.read_bytes()
        for path in (tmp_path / "dataset.npz", *sorted((tmp_path / "checkpoints").glob("*.pt")))
    }
    fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):
        file = fdopen(fd, mode, *args, **kwargs)
        return _FullDisk(file) if mode == "wb" else file

    monkeypatch.setattr(os, "fdopen", full_disk)
    assert main(tiny("collect", tmp_path, "--restart")) == 2
    err = _one_line_error(capsys)
    assert "No space left on device" in err and "dataset.npz" in err and "unchanged" in err
    assert main(tiny("train", tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "No space left on device" in err and ".pt" in err
    for path, content in kept.items():
        assert path.read_bytes() == content, path
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no torn temporary file left
    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main(tiny("train", tmp_path)) == 0  # resumes from the kept checkpoint
    assert json.loads((tmp_path / "results.json").read_text())["train"]["epochs_done"] == 2


@pytest.mark.parametrize("key", ["data.seed", "train.seed", "evaluate.seed"])
def test_an_invalid_seed_ends_in_one_line_naming_it(tmp_path, capsys, key):
    assert main(tiny("run", tmp_path, "--set", f"{key}=-1")) == 2
    assert f"{key}: expected an integer in [0, 2**32 - 1] (a seed), received -1" in (
        _one_line_error(capsys)
    )
    assert not tmp_path.joinpath("dataset.npz").exists()


def test_a_checkpoint_of_another_system_or_method_is_refused(tmp_path, capsys):
    other_system = str(ROOT / "configs" / "cartpole_dx.yaml")
    other_method = str(ROOT / "configs" / "pendulum_cost.yaml")
    for config, run in ((other_system, tmp_path / "cartpole"), (other_method, tmp_path / "cost")):
        for command in ("collect", "train"):
            args = [command, config, *TINY, "--set", f"output_dir={run}"]
            assert main([*args, "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    cartpole = str(tmp_path / "cartpole" / "checkpoints" / "best.pt")
    assert main(tiny("evaluate", tmp_path / "run", "--checkpoint", cartpole)) == 2
    err = _one_line_error(capsys)
    assert "saved by another experiment ('cartpole_dx')" in err
    assert "system 'cartpole' (this config: 'pendulum')" in err
    cost = str(tmp_path / "cost" / "checkpoints" / "best.pt")
    assert main(tiny("evaluate", tmp_path / "run", "--checkpoint", cost)) == 2
    assert "model.method 'mpc.cost' (this config: 'mpc.dx')" in _one_line_error(capsys)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_a_run_writes_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert main(tiny("collect", tmp_path)) == 0
        assert main(tiny("train", tmp_path, "--stop-after", "1")) == 0
    finally:
        os.umask(previous)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert {p.name for p in written} >= {"dataset.npz", "config.yaml", "last.pt", "best.pt"}
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_solver_warnings_are_summarized_in_the_report_not_raised(tmp_path, capsys, recwarn):
    solver = ["--set", "model.solver={max_iter: 2}"]  # unconverged solves in every epoch
    assert main(tiny("run", tmp_path, *solver)) == 0
    assert [str(w.message) for w in recwarn] == []  # nothing escapes as a Python warning
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if line.startswith("solver health"))
    summary = out[head + 1 : next(i for i, line in enumerate(out) if line.startswith("verdict"))]
    assert summary and all(line.startswith("  RuntimeWarning: epoch ") for line in summary)
    assert any("did not reach a fixed point within max_iter" in line for line in summary)


def test_version_and_python_dash_m(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mpc-policy {version('mpc-policy')}"
    assert _loaded_by(["--version"]) == (
        ["mpc_policy.agents", "mpc_policy.agents.run", "mpc_policy.agents.run.cli"],
        [],
    )
    shown = subprocess.run(
        [sys.executable, "-m", "mpc_policy", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.strip() == f"mpc-policy {version('mpc-policy')}"
    failed = subprocess.run(
        [sys.executable, "-m", "mpc_policy", "train", CONFIG, "--stop-after", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2 and "mpc-policy train: error: argument --stop-after" in (
        failed.stderr
    )


def test_a_smoke_test_budget_gets_an_honest_verdict_and_an_unconverged_expert_a_hint(
    tmp_path, capsys
):
    expert = ["--set", "data.expert_options={max_iter: 3}"]  # most expert solves stop early
    assert main(tiny("run", tmp_path, *expert)) == 0
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert verdict.startswith("verdict: smoke test passed (collection, training and evaluation")
    assert "(2 epochs on 4 trajectories, against 20 on 100 in" in verdict
    assert "did not match" not in verdict
    assert "of the expert's solves converged: give the expert more iterations" in verdict
    assert "data.expert_options" in verdict and "docs/experiments.md" in verdict


def test_the_verdict_of_a_full_budget_run():
    from mpc_policy.agents.run.report import verdict

    train = {"identifiable": {"g_over_l": [10.01, 10.0]}}
    result = {"mean_return": -60.0, "success_rate": 1.0, "returns": [-60.0]}
    assert verdict(train, {"policy": result, "expert": result}).startswith("verdict: it worked")
    off = {"identifiable": {"g_over_l": [14.0, 10.0]}}
    line = verdict(off, {"policy": result, "expert": result}, expert_converged=1.0)
    assert line.startswith("verdict: it did not match the expert yet: ")
    assert line.endswith("(hint: more data or epochs?)")
    unconverged = {**result, "unconverged_fraction": 0.25}
    line = verdict(off, {"policy": unconverged, "expert": result})
    assert "25.0% of the policy's solves stopped before a fixed point: see model.solver" in line
