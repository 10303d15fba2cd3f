"""The examples run as scripts (subprocesses) on tiny budgets, without warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr  # nothing is wrong here
    return completed.stdout


@pytest.mark.slow
def test_behaviour_cloning_then_rollout(tmp_path):
    saved = tmp_path / "policy.pt"
    out = run(
        "bc_pendulum.py",
        "--n-train",
        "4",
        "--n-test",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--save",
        str(saved),
    )
    assert "step   2" in out and "g/l" in out and saved.is_file()
    gif = tmp_path / "rollout.gif"
    out = run("rollout_pendulum.py", "--policy", str(saved), "--max-steps", "4", "--gif", str(gif))
    assert f"loaded {saved}" in out and "return" in out
    with Image.open(gif) as image:
        assert image.n_frames == 4


def test_rollout_without_a_saved_policy_uses_the_true_parameters(tmp_path):
    out = run("rollout_pendulum.py", "--policy", str(tmp_path / "absent.pt"), "--max-steps", "3")
    assert "acting with the true parameters" in out and "over 3 steps" in out


def test_the_ppo_example_takes_the_profile_and_set_dialect(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ppo_example", ROOT / "examples" / "ppo_pendulum.py"
    )
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ppo_example", example)  # its dataclass needs it there
    spec.loader.exec_module(example)
    config = str(ROOT / "configs" / "ppo_pendulum.yaml")
    args = example.parse_args(
        ["--config", config, "--profile", "quick", "--set", "horizon=7", "--seed", "3"]
    )
    assert (args.total_timesteps, args.eval_episodes) == (2048, 4)  # the profile
    assert (args.horizon, args.seed, args.n_envs) == (7, 3, 8)  # --set, a flag, the file
    args = example.parse_args(["--set", "initial_values={cost.weights: [1, 1, 1, 1]}"])
    assert args.initial_values == {"cost.weights": [1, 1, 1, 1]} and args.horizon == 5
    with pytest.raises(ValueError, match="unknown keys \\['horizn'\\]"):
        example.parse_args(["--set", "horizn=7"])
