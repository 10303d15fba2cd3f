"""An experiment config resolved once into the typed values the pipeline runs on.

``resolve`` turns an ``ExperimentConfig`` (the validated YAML file) into an ``Experiment``:
the system's record instead of its name, the run folder and dataset path, the optimizer
choice with the paper's defaults filled in, the training loop's settings, the dataset
metadata a run expects, and the run's identity (the resolved configuration as plain
values, stamped on checkpoints and written to ``config.yaml``). It also checks what the
file alone cannot tell: the system's parameters, that the learner builds and that the
run folder and dataset paths can be a folder and a file. ``prepare`` also hands out the
learner that check built, at its starting point: a run builds its learner once. Below this
module nothing reads the config: the pipeline hands each step its own values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpc_policy.envs.registry import System, get_system

from ..config import DataConfig, EvaluateConfig, ExperimentConfig, ModelConfig
from ..learners.models import build_learner
from ..train.bc import Loop
from ..train.optimization import OptimizerSettings

__all__ = ["Experiment", "prepare", "resolve"]


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment.

    Attributes:
        name: the experiment's name.
        system: the system's record.
        run_dir: where everything the experiment writes goes.
        dataset_path: the expert dataset file.
        data: expert data settings (splits, seed, horizon, the truth's overrides, the
            expert's restarts and solver options).
        model: the learner (method, starting point, solver options).
        optimizer: the optimizer choice, defaults filled in.
        loop: epochs, batch size, shuffling seed.
        n_train: train on the first n training trajectories (None: all).
        warm_start: per-sample warm starts of an MPC learner's solves.
        warm_start_reset: they restart from zeros every this many epochs.
        progress: progress bars on collection, training and evaluation.
        evaluate: rollout settings of the trained policy.
        identity: the resolved configuration as plain values.
    """

    name: str
    system: System
    run_dir: Path
    dataset_path: Path
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerSettings
    loop: Loop
    n_train: int | None
    warm_start: bool
    warm_start_reset: int
    progress: bool
    evaluate: EvaluateConfig
    identity: dict[str, Any]

    @property
    def splits(self) -> dict[str, int]:
        """Episodes per split of the dataset."""
        return {"train": self.data.n_train, "val": self.data.n_val, "test": self.data.n_test}

    def expected_metadata(self) -> dict[str, Any]:
        """The dataset metadata this experiment needs (checked when a dataset is loaded)."""
        data = self.data
        return {
            "system": self.system.name,
            "seed": data.seed,
            "episode_steps": data.episode_steps,
            "splits": self.splits,
            "env_params": dataclasses.asdict(self.system.true_params(data.env_params)),
            "horizon": data.horizon,
            "restarts": [float(r) for r in data.expert_restarts],
            "options": dict(data.expert_options),
        }


def _fresh_learner(system: System, model: ModelConfig, data: DataConfig, seed: int) -> nn.Module:
    """The learner at its starting point: built with torch's global generator seeded by
    ``seed`` (``train.seed``: a network's initial weights), that generator's state restored
    afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_learner(system, model, data.horizon, data.env_params)


def _check(config: ExperimentConfig, system: System) -> nn.Module:
    """What the file alone cannot tell: the system's parameters and the learner build.

    Returns:
        The learner built, at its starting point (``_fresh_learner``).

    Raises:
        ValueError: naming the key (``data.env_params``, ``model.dynamics_init``,
            ``model.cost_init``, ...).
    """
    try:
        system.true_params(config.data.env_params)
    except (TypeError, ValueError) as error:
        text = str(error).removeprefix("env_params: ")
        where = "data.env_params: " if text != str(error) else "data.env_params."
        raise ValueError(where + text) from None
    for name, value in config.model.dynamics_init.items():
        if not math.isfinite(value):
            raise ValueError(
                f"model.dynamics_init.{name}: expected a finite number, received {value}"
            )
    return _fresh_learner(system, config.model, config.data, config.train.seed)


def _check_paths(config: ExperimentConfig) -> None:
    """A run folder that is (or lies under) a file, or a dataset path that is a folder,
    refused up front by the key that set it (rather than an ``OSError`` halfway through).

    Raises:
        ValueError: naming ``output_dir`` or ``data.path``.
    """
    dataset_key = "data.path" if config.data.path else "output_dir"
    places = [("output_dir", config.run_dir), (dataset_key, config.dataset_path.parent)]
    for key, folder in places:
        for part in (folder, *folder.parents):
            if part.exists() and not part.is_dir():
                raise ValueError(
                    f"{key}: expected a folder path, received {str(folder)!r}, where "
                    f"{str(part)!r} is a file"
                )
    if config.dataset_path.is_dir():
        raise ValueError(
            f"{dataset_key}: expected a dataset file path, received the folder "
            f"{str(config.dataset_path)!r}"
        )


def resolve(config: ExperimentConfig | Experiment) -> Experiment:
    """The ``Experiment`` of a config (an ``Experiment`` is returned as it is).

    Raises:
        ValueError: a value the file alone could not check (see ``_check``), or a run
            folder or dataset path that cannot be one (see ``_check_paths``).
    """
    if isinstance(config, Experiment):
        return config
    return prepare(config)[0]


def prepare(config: ExperimentConfig | Experiment) -> tuple[Experiment, nn.Module]:
    """The ``Experiment`` of a config and its learner at its starting point, built once: for
    a config, the learner its check built (``resolve``); for an ``Experiment``, built here.

    Raises:
        ValueError: as ``resolve``.
    """
    if isinstance(config, Experiment):
        learner = _fresh_learner(config.system, config.model, config.data, config.loop.seed)
        return config, learner
    system = get_system(config.system)
    learner = _check(config, system)
    _check_paths(config)
    train = config.train
    experiment = Experiment(
        name=config.name,
        system=system,
        run_dir=config.run_dir,
        dataset_path=config.dataset_path,
        data=config.data,
        model=config.model,
        optimizer=OptimizerSettings.paper_default(
            config.model.method == "nn", train.optimizer, train.lr, train.alpha, train.scheduler
        ),
        loop=Loop(
            train.epochs,
            train.batch_size,
            train.seed,
            eval_every=train.eval_every,
            patience=train.patience,
            min_delta=train.min_delta,
            lr_drops=train.lr_drops,
        ),
        n_train=train.n_train,
        warm_start=train.warm_start,
        warm_start_reset=train.warm_start_reset,
        progress=train.progress,
        evaluate=config.evaluate,
        identity=config.to_dict(),
    )
    return experiment, learner
