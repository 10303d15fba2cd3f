"""The steps of an experiment: collect, train, evaluate, and ``run``, the one sequence of them.

Each step takes an ``Experiment`` (``mpc_policy.agents.run.experiment.resolve``; a config is
resolved on the way in) and hands the modules below it their own values. ``run`` sequences
the steps it is asked for (the ``mpc-policy`` command asks it for each of its commands, and
hears of each step through ``Events``): one learner, built when the config is checked, is
trained and then evaluated, and the dataset file is read once. Everything an experiment
writes goes under its run folder (``run_dir``):

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
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import torch
import yaml
from torch import nn

from mpc_policy.policy import MPCPolicy

from ..config import ExperimentConfig
from ..data.atomic import atomic_write, atomic_write_json
from ..data.datasets import DatasetError, ExpertDataset, collect_dataset, load_dataset
from ..data.expert import MPCExpert
from ..learners.models import DYNAMICS_METHODS, ModelReport, parameter_groups
from ..train.bc import Trainer, TrainResult
from ..train.checkpoint import RunCheckpoints
from ..train.guards import RunLock
from ..train.logging import TrainingLog
from ..train.objectives import ImitationObjective, WarmStarts
from ..train.optimization import Optimization
from ..train.sysid import SysIdObjective
from .evaluate import evaluate_policy
from .experiment import Experiment, prepare, resolve
from .trained import restore_learner

__all__ = [
    "STEPS",
    "Events",
    "collect",
    "evaluate",
    "load_policy",
    "prepare",
    "resolve",
    "run",
    "train",
]

Config: TypeAlias = ExperimentConfig | Experiment
# the steps of an experiment, in the order ``run`` takes them
STEPS = ("collect", "train", "evaluate")


class Events:
    """What the caller of ``run`` hears of its steps (the ``mpc-policy`` command prints
    them); each method does nothing here."""

    def collected(self, dataset: ExpertDataset, path: Path, reused: bool) -> None:
        """The dataset was collected (``reused`` False) or an existing file reused."""

    def trained(self, result: TrainResult) -> None:
        """Training ended (or stopped after ``stop_after`` epochs)."""

    def evaluating(self, checkpoint: str) -> None:
        """The evaluation of ``checkpoint`` starts."""

    def evaluated(self, results: dict[str, Any]) -> None:
        """The evaluation ended (``results`` as ``evaluate`` returns them)."""


def _update_results(experiment: Experiment, section: str, values: dict[str, Any]) -> Path:
    """Set ``section`` of ``results.json`` (atomic rewrite)."""
    path = experiment.run_dir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[section] = values
    return atomic_write_json(path, results, indent=2)


def collect(config: Config, overwrite: bool = False) -> tuple[Path, bool]:
    """Collect the expert dataset, or reuse the file there if it matches the experiment.

    Returns:
        The dataset path and whether an existing file was reused.
    """
    path, reused = _collect(resolve(config), overwrite)
    return path, reused is not None


def _collect(experiment: Experiment, overwrite: bool) -> tuple[Path, ExpertDataset | None]:
    """``collect``: the dataset path, and the dataset read from the file reused (checked
    against the experiment), or None where it was collected afresh and written."""
    path = experiment.dataset_path
    if path.is_file() and not overwrite:
        try:
            return path, load_dataset(path, expect=experiment.expected_metadata())
        except DatasetError as error:
            raise DatasetError(
                f"{error} (pass --restart or --overwrite to replace the file)"
            ) from error
    data = experiment.data
    dataset = collect_dataset(
        experiment.system,
        experiment.splits,
        seed=data.seed,
        episode_steps=data.episode_steps,
        horizon=data.horizon,
        env_params=data.env_params,
        expert_restarts=data.expert_restarts,
        expert_options=data.expert_options,
        progress=experiment.progress,
    )
    return dataset.save(path), None


def _splits(experiment: Experiment, dataset: ExpertDataset) -> dict[str, dict[str, torch.Tensor]]:
    splits = {}
    for name in ("train", "val", "test"):
        data = dataset.split(name, experiment.n_train if name == "train" else None).tensors()
        splits[name] = {
            "x": data["states"],
            "u": data["nominal_actions"],
            "x_plan": data["nominal_states"],
        }
    return splits


def _objective(
    experiment: Experiment, learner: nn.Module, splits: dict[str, dict[str, torch.Tensor]]
) -> ImitationObjective:
    """The method's objective: per-sample warm starts and the test transitions of an MPC
    learner, and its distances to the truth."""
    method = experiment.model.method
    mpc = isinstance(learner, MPCPolicy)
    warm = None
    if experiment.warm_start and mpc:
        sizes = {name: int(split["x"].shape[0]) for name, split in splits.items()}
        warm = WarmStarts(sizes, experiment.data.horizon, experiment.system.n_ctrl)
    test, val = splits["test"], splits["val"]
    transitions = val_transitions = None
    if mpc and method in DYNAMICS_METHODS:
        transitions = (test["x_plan"], test["u"])
        val_transitions = (val["x_plan"], val["u"])
    report = ModelReport(experiment.system, method, experiment.data.env_params)
    kind = SysIdObjective if method == "sysid" else ImitationObjective
    return kind(learner, warm, experiment.warm_start_reset, report, transitions, val_transitions)


def train(
    config: Config,
    restart: bool = False,
    stop_after: int | None = None,
    apply_new_settings: bool = False,
) -> TrainResult:
    """Train the configured learner on the dataset, resuming from the last checkpoint.

    The run folder is locked while training (``mpc_policy.agents.train.guards.RunLock``): a
    second run on the same folder is refused.

    Args:
        config: the experiment.
        restart: delete earlier checkpoints and logs of this run first.
        stop_after: stop after this many epochs in this call (resumable); None: train to
            the end.
        apply_new_settings: resume even if the optimizer or scheduler settings changed
            since the checkpoint, applying the new ones (refused otherwise).

    Raises:
        ValueError: ``stop_after`` is below 1 (it would train nothing).
    """
    _check_stop_after(stop_after)
    experiment, learner = prepare(config)
    return _train(experiment, learner, None, restart, stop_after, apply_new_settings)


def _check_stop_after(stop_after: int | None) -> None:
    if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 1):
        raise ValueError(f"stop_after: expected None or an integer >= 1, received {stop_after!r}")


def _train(
    experiment: Experiment,
    learner: nn.Module,
    dataset: ExpertDataset | None,
    restart: bool,
    stop_after: int | None,
    apply_new_settings: bool,
) -> TrainResult:
    """``train`` of ``learner`` (at its starting point, ``prepare``) on ``dataset`` (None:
    read from the experiment's file), the run folder locked."""
    with RunLock(experiment.run_dir):
        return _fit(experiment, learner, dataset, restart, stop_after, apply_new_settings)


def _fit(
    experiment: Experiment,
    learner: nn.Module,
    dataset: ExpertDataset | None,
    restart: bool,
    stop_after: int | None,
    apply_new_settings: bool,
) -> TrainResult:
    run_dir = experiment.run_dir
    if restart:
        for folder in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    if dataset is None:
        dataset = load_dataset(experiment.dataset_path, expect=experiment.expected_metadata())
    text = yaml.safe_dump(experiment.identity, sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda file: file.write(text.encode()))
    # the generator as the learner's build left it seeded (``prepare``): what training draws
    # from it, and its checkpoints keep, is seeded by train.seed
    torch.manual_seed(experiment.loop.seed)
    splits = _splits(experiment, dataset)
    groups = parameter_groups(learner)
    if not groups:
        raise ValueError(f"model.method {experiment.model.method}: nothing to learn")
    n_batches = -(-splits["train"]["x"].shape[0] // experiment.loop.batch_size)
    objective = _objective(experiment, learner, splits)
    trainer = Trainer(
        objective,
        Optimization(
            groups,
            experiment.optimizer,
            experiment.loop.epochs * n_batches,
            experiment.model.alternate_every,
        ),
        TrainingLog(run_dir / "tensorboard", experiment.progress),
        splits,
        experiment.loop,
        RunCheckpoints(
            run_dir / "checkpoints",
            experiment.identity,
            must_match=("model", "data", "system"),
            apply_new_settings=apply_new_settings,
        ),
    )
    result = trainer.fit(stop_after=stop_after)
    identifiable = objective.report.identifiable(learner) if objective.report else {}
    result = dataclasses.replace(result, identifiable={k: list(v) for k, v in identifiable.items()})
    _update_results(experiment, "train", result.to_dict())
    return result


def load_policy(
    config: Config, checkpoint: str = "best", on_unconverged: str | None = None
) -> nn.Module:
    """The trained learner: ``checkpoint`` is "best", "last" or a file path;
    ``on_unconverged`` overrides the solver's (e.g. "ignore" for rollouts).

    Raises:
        ValueError: the checkpoint was saved by a run of another system, method, horizon
            or network size (its saved config says so), or its tensors do not fit.
    """
    experiment, learner = prepare(config)
    return restore_learner(experiment, learner, checkpoint, on_unconverged)


def evaluate(config: Config, checkpoint: str = "best", gif: bool | None = None) -> dict[str, Any]:
    """Episode returns and success rate of the trained policy (and of the expert when
    ``evaluate.compare_expert``); writes them to ``results.json``.

    Nothing is differentiated here: the policy's unconverged solves are reported (the
    ``unconverged_fraction`` of each result), not warned about one by one.
    """
    experiment, learner = prepare(config)
    return _evaluate(experiment, learner, checkpoint, gif)


def _evaluate(
    experiment: Experiment, learner: nn.Module, checkpoint: str, gif: bool | None
) -> dict[str, Any]:
    """``evaluate`` with ``learner`` (this experiment's) holding the checkpoint."""
    settings, data = experiment.evaluate, experiment.data
    make_gif = settings.gif if gif is None else gif
    common: dict[str, Any] = {
        "seed": settings.seed,
        "env_params": data.env_params,
        "max_episode_steps": settings.max_episode_steps,
        "success_angle": settings.success_angle,
        "progress": experiment.progress,
    }
    policy = restore_learner(experiment, learner, checkpoint, on_unconverged="ignore")
    gif_path = experiment.run_dir / "rollout.gif" if make_gif else None
    results = {
        "checkpoint": checkpoint,
        "policy": evaluate_policy(
            policy,
            experiment.system,
            settings.episodes,
            gif_path=gif_path,
            gif_every=settings.gif_every,
            **common,
        ).to_dict(),
    }
    if settings.compare_expert:
        expert = MPCExpert.for_system(
            experiment.system,
            data.horizon,
            env_params=data.env_params,
            restarts=tuple(data.expert_restarts),
            **data.expert_options,
        )
        results["expert"] = evaluate_policy(
            expert, experiment.system, settings.episodes, **common
        ).to_dict()
    _update_results(experiment, "evaluation", results)
    return results


def run(
    config: Config,
    restart: bool = False,
    apply_new_settings: bool = False,
    gif: bool | None = None,
    *,
    steps: Sequence[str] = STEPS,
    overwrite: bool = False,
    stop_after: int | None = None,
    checkpoint: str = "best",
    learner: nn.Module | None = None,
    events: Events | None = None,
) -> dict[str, Any]:
    """Collect (or reuse) the data, train, evaluate: the ``steps`` asked for, in that order,
    with one learner (trained, then holding the evaluated checkpoint) and the dataset file
    read once.

    Args:
        config: the experiment.
        restart: training starts afresh (``train``'s).
        apply_new_settings: as ``train``'s.
        gif: as ``evaluate``'s.
        steps: some of ``STEPS`` ("collect", "train", "evaluate").
        overwrite: collect afresh even where a dataset file exists (``collect``'s).
        stop_after: as ``train``'s.
        checkpoint: the checkpoint evaluated, as ``evaluate``'s.
        learner: this experiment's learner at its starting point (``prepare``'s, when the
            caller resolved the config that way); None: built here.
        events: hears of each step (``Events``).

    Returns:
        Where everything went: "dataset" and "dataset_reused" (collect), "train" (the
        ``TrainResult`` as a dict), "evaluation" (``evaluate``'s results) for the steps
        run, and "results" (the ``results.json`` path).

    Raises:
        ValueError: an unknown step, or ``stop_after`` below 1, before anything runs.
    """
    unknown = [step for step in steps if step not in STEPS]
    if unknown or not steps:
        raise ValueError(f"steps: expected some of {list(STEPS)}, received {list(steps)}")
    if "train" in steps:
        _check_stop_after(stop_after)
    if learner is None:
        experiment, learner = prepare(config)
    else:
        experiment = resolve(config)
    events = events or Events()
    summary: dict[str, Any] = {}
    dataset = None
    if "collect" in steps:
        path, dataset = _collect(experiment, overwrite)
        reused = dataset is not None
        if dataset is None:
            dataset = load_dataset(path, expect=experiment.expected_metadata())
        events.collected(dataset, path, reused)
        summary.update(dataset=str(path), dataset_reused=reused)
    if "train" in steps:
        result = _train(experiment, learner, dataset, restart, stop_after, apply_new_settings)
        events.trained(result)
        summary["train"] = result.to_dict()
    if "evaluate" in steps:
        events.evaluating(checkpoint)
        summary["evaluation"] = _evaluate(experiment, learner, checkpoint, gif)
        events.evaluated(summary["evaluation"])
    summary["results"] = str(experiment.run_dir / "results.json")
    return summary
