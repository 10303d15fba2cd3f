"""The ``mpc-policy`` command: each subcommand end to end on a tiny budget, resumption of a
stopped and of a killed training run, and error messages."""

from __future__ import annotations

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

from mpc_policy.agents import cli
from mpc_policy.agents.cli import main

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
    assert [s.value for s in scripts if s.name == "mpc-policy"] == ["mpc_policy.agents.cli:main"]


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


@pytest.mark.slow
def test_a_killed_training_run_resumes_where_it_stopped(tmp_path):
    args = tiny("train", tmp_path, "--set", "train.epochs=30")
    assert main(tiny("collect", tmp_path)) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "mpc_policy.agents.cli", *args],
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


def _seconds(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def test_help_is_quick():
    """``--help`` imports neither torch nor the learning stack (``import mpc_policy`` loads
    its names lazily): 0.5 s here idle. The bound is generous, for loaded machines; what
    is loaded is the exact check."""
    assert _seconds("-m", "mpc_policy.agents.cli", "--help") < 3.0
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from mpc_policy.agents import cli\n"
            "cli._parser().format_help()\n"
            "print(sorted(m for m in sys.modules if m.startswith('mpc_policy.agents')))\n"
            "print('torch' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert loaded[0] == "['mpc_policy.agents', 'mpc_policy.agents.cli']"
    assert loaded[1] == "False"


def test_the_usage_advertises_only_options_that_parse(capsys):
    lines = [line.split("#")[0] for line in cli.__doc__.splitlines() if "mpc-policy " in line]
    assert {line.split()[1] for line in lines} == {"run", "collect", "train", "evaluate", "warmup"}
    for line in lines:
        command = line.split()[1]
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
