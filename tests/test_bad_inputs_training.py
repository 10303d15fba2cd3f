"""Bad inputs to training, datasets, configurations and the command line: named errors,
exit code 2 and one line for configuration errors, and the guards of a training run
(non-finite losses and parameters, changed resume settings, one run per folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc_policy.agents.config import load_config
from mpc_policy.agents.data.datasets import (
    DatasetError,
    ExpertDataset,
    collect_dataset,
    load_dataset,
)
from mpc_policy.agents.run.cli import main
from mpc_policy.agents.run.pipeline import collect, train
from mpc_policy.agents.train.guards import (
    RunLock,
    RunLocked,
    TrainingDiverged,
    check_loss,
    check_parameters,
)
from mpc_policy.solution import SolverInfo, Status
from tests.test_cli import CONFIG, tiny

SPLITS = {"train": 2, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def dataset() -> ExpertDataset:
    return collect_dataset("pendulum", SPLITS, seed=3, episode_steps=1, horizon=6)


def _saved(dataset: ExpertDataset, path: Path, arrays=None, metadata=None) -> Path:
    contents = {**dataset.arrays, **(arrays or {})}
    meta = {**dataset.metadata, **(metadata or {})}
    np.savez(path, metadata=np.array(json.dumps(meta)), **contents)
    return path


def _scaled_actions(dataset: ExpertDataset) -> dict[str, np.ndarray]:
    return {"actions": dataset["actions"] * np.float32(1e6)}


DATASET_CASES = [
    ("extra array", {"arrays": {"extra": np.zeros(3)}}, r"unknown array\(s\) \['extra'\]"),
    (
        "other system's env id",
        {"metadata": {"env_id": "mpc_policy/CartPole-v0"}},
        r"'env_id'.*CartPole.*'pendulum'",
    ),
    ("unknown system", {"metadata": {"system": "acrobot"}}, r"'system' is 'acrobot'"),
    ("actions beyond the bound", "actions", r"'actions' reaches \|u\| = .*control bound 2"),
]


@pytest.mark.parametrize(
    ("change", "match"), [c[1:] for c in DATASET_CASES], ids=[c[0] for c in DATASET_CASES]
)
def test_inconsistent_dataset_is_refused_naming_the_problem(
    dataset, tmp_path, change, match
) -> None:
    kwargs = {"arrays": _scaled_actions(dataset)} if change == "actions" else change
    path = _saved(dataset, tmp_path / "bad.npz", **kwargs)
    with pytest.raises(DatasetError, match=match):
        load_dataset(path)


def test_wrong_state_width_is_refused(dataset, tmp_path) -> None:
    arrays = {k: dataset[k][..., :2] for k in ("states", "next_states", "nominal_states")}
    path = _saved(dataset, tmp_path / "bad.npz", arrays=arrays)
    with pytest.raises(DatasetError, match=r"'states' has shape .* n = 3"):
        load_dataset(path)


def _config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


CONFIG_CASES = [
    (
        "yaml syntax",
        "name: x\nsystem: pendulum\ntrain: {epochs: [1\n",
        r"YAML syntax error at line",
    ),
    (
        "solver typo",
        "name: x\nsystem: pendulum\nmodel:\n  solver: {max_iters: 3}\n",
        r"model.solver: .*max_iters",
    ),
    (
        "solver value",
        "name: x\nsystem: pendulum\nmodel:\n  solver: {grad_method: implicit}\n",
        r"model.solver: grad_method",
    ),
    (
        "expert option typo",
        "name: x\nsystem: pendulum\ndata:\n  expert_options: {tol: fast}\n",
        r"data.expert_options: tol",
    ),
    (
        "unknown key",
        "name: x\nsystem: pendulum\ntrain: {epoch: 3}\n",
        r"train.epoch: unknown config key",
    ),
    (
        "wrong type",
        "name: x\nsystem: pendulum\ntrain: {epochs: three}\n",
        r"train.epochs: expected int",
    ),
    (
        "lr inf",
        "name: x\nsystem: pendulum\ntrain: {lr: .inf}\n",
        r"train.lr: expected a finite positive",
    ),
    (
        "lr nan",
        "name: x\nsystem: pendulum\ntrain: {lr: .nan}\n",
        r"train.lr: expected a finite positive",
    ),
    (
        "alpha",
        "name: x\nsystem: pendulum\ntrain: {alpha: 1.5}\n",
        r"train.alpha: expected a float in \(0, 1\)",
    ),
    (
        "patience",
        "name: x\nsystem: pendulum\ntrain: {patience: 0}\n",
        r"train.patience: expected None or an integer >= 1, received 0",
    ),
    (
        "min_delta",
        "name: x\nsystem: pendulum\ntrain: {min_delta: 1.0}\n",
        r"train.min_delta: expected a float in \[0, 1\), received 1.0",
    ),
    (
        "eval_every",
        "name: x\nsystem: pendulum\ntrain: {eval_every: 0}\n",
        r"train.eval_every: expected an integer >= 1, received 0",
    ),
    ("system", "name: x\nsystem: acrobot\n", r"system: expected one of"),
    ("top level list", "- 1\n- 2\n", r"expected a mapping at the top level"),
]


@pytest.mark.parametrize(
    ("text", "match"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_config_error_names_the_key_and_the_file(tmp_path, text, match) -> None:
    path = _config_file(tmp_path, text)
    with pytest.raises(ValueError, match=match) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


OVERRIDE_CASES = [
    ("yaml syntax", "train.epochs=[1", r"--set train.epochs: the value '\[1' is not YAML"),
    ("no equals", "train.epochs", r"--set: expected 'section.key=value'"),
    ("lr inf", "train.lr=.inf", r"train.lr: expected a finite positive"),
    ("unknown section", "trian.epochs=3", r"trian: unknown config key"),
]


@pytest.mark.parametrize(
    ("override", "match"), [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES]
)
def test_override_error_names_the_key(override, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(CONFIG, overrides=[override])


@pytest.mark.parametrize(
    "override", ["train.lr=.inf", "train.epochs=[1", "model.solver={max_iters: 2}"]
)
def test_cli_config_error_is_one_line_and_exit_code_2(tmp_path, capsys, override) -> None:
    assert main(["train", CONFIG, "--set", override, "--set", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "error:" in err
    assert not (tmp_path / "checkpoints").exists()


LEARNER_CASES = [
    ("model.dynamics_init={gravty: 1.0}", r"model.dynamics_init: 'gravty' is not a parameter"),
    ("model.dynamics_init={gravity: .nan}", r"model.dynamics_init.gravity: expected a finite"),
    ("data.env_params={mas: 1.0}", r"data.env_params: \['mas'\] are not parameters"),
    ("data.env_params={mass: -1.0}", r"data.env_params.mass: expected a finite number > 0"),
    ("model.cost_init={weights: [1, 2], goal: [1]}", r"model.cost_init.weights: expected 4"),
]


@pytest.mark.parametrize(("override", "match"), LEARNER_CASES, ids=[c[0] for c in LEARNER_CASES])
def test_cli_learner_config_error_names_the_key_and_the_file(tmp_path, capsys, override, match):
    assert main(["train", CONFIG, "--set", override, "--set", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and CONFIG in err and err.count("\n") == 1


def test_cli_yaml_syntax_error_in_the_file_exits_2(tmp_path, capsys) -> None:
    path = _config_file(tmp_path, "name: x\nsystem: pendulum\n  train: 3\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line" in err and err.count("\n") == 1


def test_non_finite_loss_and_parameter_name_the_epoch_and_the_parameter() -> None:
    with pytest.raises(TrainingDiverged, match=r"epoch 3: the training loss of batch 1 is nan"):
        check_loss(3, torch.tensor(float("nan")), "training loss of batch 1")
    info = SolverInfo(
        torch.ones(3, dtype=torch.long),
        torch.tensor([True, False, True]),
        torch.zeros(3, dtype=torch.float64),
        torch.ones(3, dtype=torch.float64),
        status=torch.tensor([0, int(Status.NONFINITE), 0], dtype=torch.int8),
    )
    with pytest.raises(TrainingDiverged, match=r"rows \[1\] of the batch became NONFINITE"):
        check_loss(2, float("nan"), "training loss of batch 1", info)
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.bias.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"epoch 4: parameter 'bias' became non-finite"):
        check_parameters(4, module, "after the step")


@pytest.mark.slow
def test_diverging_training_stops_and_saves_no_nan_best(tmp_path, capsys) -> None:
    assert main(tiny("collect", tmp_path)) == 0
    code = main(tiny("train", tmp_path, "--set", "train.lr=1.0e+308"))
    err = capsys.readouterr().err
    assert code == 2 and "epoch 1" in err and ("parameter" in err or "loss" in err)
    best = tmp_path / "checkpoints" / "best.pt"
    if best.exists():  # epoch 0 (before training) may be the best: finite
        state = torch.load(best, weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
        assert state["epoch"] == 0


@pytest.mark.slow
def test_resume_with_changed_optimizer_settings_is_refused_unless_applied(tmp_path, capsys) -> None:
    assert main(tiny("collect", tmp_path)) == 0
    assert main(tiny("train", tmp_path, "--stop-after", "1")) == 0
    capsys.readouterr()
    assert main(tiny("train", tmp_path, "--set", "train.lr=0.05")) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.1 -> 0.05" in err and "--apply-new-settings" in err
    assert main(tiny("train", tmp_path, "--set", "train.scheduler=none")) == 2
    assert "train.scheduler: 'cosine' -> 'none'" in capsys.readouterr().err
    assert main(tiny("train", tmp_path, "--set", "train.lr=0.05", "--apply-new-settings")) == 0
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.05
    assert state["scheduler"]["base_lrs"] == [0.05]
    assert state["config"]["train"]["lr"] == 0.05


def test_run_folder_lock_refuses_a_second_run_and_survives_a_dead_one(tmp_path) -> None:
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").exists()
        # another live process holding it: this test's parent process
        (tmp_path / ".lock").write_text(
            json.dumps({"pid": os.getppid(), "host": os.uname().nodename})
        )
        with pytest.raises(RunLocked, match=r"in use by another run \(pid"):
            RunLock(tmp_path).acquire()
        (tmp_path / ".lock").write_text(
            json.dumps({"pid": os.getpid(), "host": os.uname().nodename})
        )
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename})
    )
    with RunLock(tmp_path) as lock:  # the stale lock of a finished process is taken over
        assert lock.held
    assert not (tmp_path / ".lock").exists()


def test_train_on_a_locked_folder_exits_2(tmp_path, capsys) -> None:
    config = load_config(CONFIG, "quick", [f"output_dir={tmp_path}"])
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    with pytest.raises(RunLocked):
        train(config)
    assert main(tiny("train", tmp_path)) == 2
    assert "in use by another run" in capsys.readouterr().err
    (tmp_path / ".lock").unlink()
    assert collect is not None
