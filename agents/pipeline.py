"""The steps of an experiment from its config: collect, train, evaluate, and all three.

Everything an experiment writes goes under its run folder (``config.run_dir``):

    dataset.npz           expert data (unless ``data.path`` points elsewhere)
    config.yaml           the resolved configuration
    tensorboard/          scalars (``tensorboard --logdir <run folder>``)
    checkpoints/last.pt   the latest state (resumable); checkpoints/best.pt the best model
    results.json          training summary and evaluation
    rollout.gif           a rendered episode, when asked
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mpc_policy.agents.bc import ImitationObjective, Trainer, TrainResult, WarmStarts
from mpc_policy.agents.checkpoint import load_checkpoint
from mpc_policy.agents.config import ExperimentConfig
from mpc_policy.agents.datasets import DatasetError, ExpertDataset, collect_dataset, load_dataset
from mpc_policy.agents.evaluate import evaluate_policy
from mpc_policy.agents.guards import RunLock
from mpc_policy.agents.models import MODEL_CLASS, build_learner
from mpc_policy.agents.sysid import SysIdObjective
from mpc_policy.agents.systems import expert_for, system_params
from mpc_policy.policy import MPCPolicy

__all__ = ["check_config", "collect", "evaluate", "load_policy", "run", "train"]


def expected_metadata(config: ExperimentConfig) -> dict[str, Any]:
    """The dataset metadata an experiment needs (checked when a dataset is loaded)."""
    data = config.data
    return {
        "system": config.system,
        "seed": data.seed,
        "episode_steps": data.episode_steps,
        "splits": {"train": data.n_train, "val": data.n_val, "test": data.n_test},
        "env_params": dataclasses.asdict(system_params(config.system, data.env_params)),
        "horizon": data.horizon,
        "restarts": [float(r) for r in data.expert_restarts],
        "options": dict(data.expert_options),
    }


def check_config(config: ExperimentConfig) -> None:
    """What the file alone cannot tell: the system's parameters and the learner build.

    Raises:
        ValueError: naming the key (``data.env_params``, ``model.dynamics_init``,
            ``model.cost_init``, ...).
    """
    try:
        system_params(config.system, config.data.env_params)
    except (TypeError, ValueError) as error:
        text = str(error).removeprefix("env_params: ")
        where = "data.env_params: " if text != str(error) else "data.env_params."
        raise ValueError(where + text) from None
    for name, value in config.model.dynamics_init.items():
        if not math.isfinite(value):
            raise ValueError(
                f"model.dynamics_init.{name}: expected a finite number, received {value}"
            )
    build_learner(config)


def _update_results(config: ExperimentConfig, section: str, values: dict[str, Any]) -> Path:
    """Set ``section`` of ``results.json`` (atomic rewrite)."""
    path = config.run_dir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[section] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.", suffix=".tmp")
    with os.fdopen(fd, "w") as file:
        json.dump(results, file, indent=2)
    os.replace(tmp, path)
    return path


def collect(config: ExperimentConfig, overwrite: bool = False) -> tuple[Path, bool]:
    """Collect the expert dataset, or reuse the file there if it matches the config.

    Returns:
        The dataset path and whether an existing file was reused.
    """
    path = config.dataset_path
    if path.is_file() and not overwrite:
        try:
            load_dataset(path, expect=expected_metadata(config))
            return path, True
        except DatasetError as error:
            raise DatasetError(f"{error} (pass --overwrite to replace the file)") from error
    data = config.data
    dataset = collect_dataset(
        config.system,
        {"train": data.n_train, "val": data.n_val, "test": data.n_test},
        seed=data.seed,
        episode_steps=data.episode_steps,
        horizon=data.horizon,
        env_params=data.env_params,
        expert_restarts=data.expert_restarts,
        expert_options=data.expert_options,
    )
    return dataset.save(path), False


def _objective(
    config: ExperimentConfig, learner: nn.Module, dataset: ExpertDataset
) -> ImitationObjective:
    """The method's objective, with per-sample warm starts for an MPC learner."""
    warm = None
    if config.train.warm_start and isinstance(learner, MPCPolicy):
        sizes = {
            split: len(dataset.split(split, config.train.n_train if split == "train" else None))
            for split in ("train", "val", "test")
        }
        warm = WarmStarts(sizes, config.data.horizon, MODEL_CLASS[config.system].n_ctrl)
    if config.model.method == "sysid":
        return SysIdObjective(learner, warm)
    return ImitationObjective(learner, warm)


def train(
    config: ExperimentConfig,
    restart: bool = False,
    stop_after: int | None = None,
    apply_new_settings: bool = False,
) -> TrainResult:
    """Train the configured learner on the dataset, resuming from the last checkpoint.

    The run folder is locked while training (``mpc_policy.agents.guards.RunLock``): a second run on
    the same folder is refused.

    Args:
        config: the experiment.
        restart: delete earlier checkpoints and logs of this run first.
        stop_after: stop after this many epochs in this call (resumable).
        apply_new_settings: resume even if the optimizer or scheduler settings changed
            since the checkpoint, applying the new ones (refused otherwise).
    """
    with RunLock(config.run_dir):
        return _train(config, restart, stop_after, apply_new_settings)


def _train(
    config: ExperimentConfig, restart: bool, stop_after: int | None, apply_new_settings: bool
) -> TrainResult:
    run_dir = config.run_dir
    if restart:
        for folder in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    dataset = load_dataset(config.dataset_path, expect=expected_metadata(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    torch.manual_seed(config.train.seed)
    learner = build_learner(config)
    trainer = Trainer(
        config, _objective(config, learner, dataset), dataset, run_dir, apply_new_settings
    )
    result = trainer.fit(stop_after=stop_after)
    _update_results(config, "train", result.to_dict())
    return result


def load_policy(config: ExperimentConfig, checkpoint: str = "best") -> nn.Module:
    """The trained learner: ``checkpoint`` is "best", "last" or a file path."""
    path = (
        config.run_dir / "checkpoints" / f"{checkpoint}.pt"
        if checkpoint in ("best", "last")
        else Path(checkpoint)
    )
    learner = build_learner(config)
    learner.load_state_dict(load_checkpoint(path)["model"])
    return learner.eval()


def evaluate(
    config: ExperimentConfig, checkpoint: str = "best", gif: bool | None = None
) -> dict[str, Any]:
    """Episode returns and success rate of the trained policy (and of the expert when
    ``evaluate.compare_expert``); writes them to ``results.json``."""
    settings = config.evaluate
    make_gif = settings.gif if gif is None else gif
    common: dict[str, Any] = {
        "seed": settings.seed,
        "env_params": config.data.env_params,
        "max_episode_steps": settings.max_episode_steps,
        "success_angle": settings.success_angle,
    }
    policy = load_policy(config, checkpoint)
    gif_path = config.run_dir / "rollout.gif" if make_gif else None
    results = {
        "checkpoint": checkpoint,
        "policy": evaluate_policy(
            policy,
            config.system,
            settings.episodes,
            gif_path=gif_path,
            gif_every=settings.gif_every,
            **common,
        ).to_dict(),
    }
    if settings.compare_expert:
        data = config.data
        expert = expert_for(
            config.system, data.env_params, data.horizon, data.expert_restarts, data.expert_options
        )
        results["expert"] = evaluate_policy(
            expert, config.system, settings.episodes, **common
        ).to_dict()
    _update_results(config, "evaluation", results)
    return results


def run(
    config: ExperimentConfig, restart: bool = False, apply_new_settings: bool = False
) -> dict[str, Any]:
    """Collect (or reuse) the data, train, evaluate; return where everything went."""
    dataset, reused = collect(config)
    result = train(config, restart=restart, apply_new_settings=apply_new_settings)
    evaluation = evaluate(config)
    return {
        "dataset": str(dataset),
        "dataset_reused": reused,
        "train": result.to_dict(),
        "evaluation": evaluation,
        "results": str(config.run_dir / "results.json"),
    }
