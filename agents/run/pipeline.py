"""The steps of an experiment: collect, train, evaluate, and all three.

Each step takes an ``Experiment`` (``mpc_policy.agents.run.experiment.resolve``; a config is
resolved on the way in) and hands the modules below it their own values. Everything an
experiment writes goes under its run folder (``run_dir``):

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
from ..learners.models import DYNAMICS_METHODS, ModelReport, build_learner, parameter_groups
from ..train.bc import Trainer, TrainResult
from ..train.checkpoint import RunCheckpoints, load_checkpoint
from ..train.guards import RunLock
from ..train.logging import TrainingLog
from ..train.objectives import ImitationObjective, WarmStarts
from ..train.optimization import Optimization
from ..train.sysid import SysIdObjective
from .evaluate import evaluate_policy
from .experiment import Experiment, resolve

__all__ = ["collect", "evaluate", "load_policy", "resolve", "run", "train"]

Config: TypeAlias = ExperimentConfig | Experiment


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
    experiment = resolve(config)
    path = experiment.dataset_path
    if path.is_file() and not overwrite:
        try:
            load_dataset(path, expect=experiment.expected_metadata())
            return path, True
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
    return dataset.save(path), False


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
    if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 1):
        raise ValueError(f"stop_after: expected None or an integer >= 1, received {stop_after!r}")
    experiment = resolve(config)
    with RunLock(experiment.run_dir):
        return _train(experiment, restart, stop_after, apply_new_settings)


def _train(
    experiment: Experiment, restart: bool, stop_after: int | None, apply_new_settings: bool
) -> TrainResult:
    run_dir = experiment.run_dir
    if restart:
        for folder in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
    dataset = load_dataset(experiment.dataset_path, expect=experiment.expected_metadata())
    text = yaml.safe_dump(experiment.identity, sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda file: file.write(text.encode()))
    torch.manual_seed(experiment.loop.seed)
    learner = build_learner(
        experiment.system, experiment.model, experiment.data.horizon, experiment.data.env_params
    )
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


# what a checkpoint's learner is, as (section, key) of its saved config: a checkpoint whose
# values differ was trained for another experiment and is refused
LEARNER_IDENTITY = (
    (None, "system"),
    ("model", "method"),
    ("model", "hidden_size"),
    ("data", "horizon"),
)


def _check_learner_identity(path: Path, saved: Any, experiment: Experiment) -> None:
    """Refuse a checkpoint saved by a run of another system, method or horizon.

    Raises:
        ValueError: naming the differing keys, the checkpoint's values and this run's.
    """
    if not isinstance(saved, dict):
        return  # a checkpoint without its config: ``load_state_dict`` still checks shapes
    ours = experiment.identity
    differ = []
    for section, key in LEARNER_IDENTITY:
        theirs = saved if section is None else saved.get(section) or {}
        mine = ours if section is None else ours[section]
        name = key if section is None else f"{section}.{key}"
        if key in theirs and theirs[key] != mine[key]:
            differ.append(f"{name} {theirs[key]!r} (this config: {mine[key]!r})")
    if differ:
        raise ValueError(
            f"checkpoint {str(path)!r}: saved by another experiment "
            f"({saved.get('name', '?')!r}): " + ", ".join(differ) + "; evaluate it with the "
            "config that trained it, or pass this run's own checkpoint"
        )


def load_policy(
    config: Config, checkpoint: str = "best", on_unconverged: str | None = None
) -> nn.Module:
    """The trained learner: ``checkpoint`` is "best", "last" or a file path;
    ``on_unconverged`` overrides the solver's (e.g. "ignore" for rollouts).

    Raises:
        ValueError: the checkpoint was saved by a run of another system, method, horizon
            or network size (its saved config says so), or its tensors do not fit.
    """
    experiment = resolve(config)
    path = (
        experiment.run_dir / "checkpoints" / f"{checkpoint}.pt"
        if checkpoint in ("best", "last")
        else Path(checkpoint)
    )
    state = load_checkpoint(path)
    _check_learner_identity(path, state.get("config"), experiment)
    learner = build_learner(
        experiment.system,
        experiment.model,
        experiment.data.horizon,
        experiment.data.env_params,
        on_unconverged=on_unconverged,
    )
    try:
        learner.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"checkpoint {str(path)!r}: does not fit this experiment's learner ({first})"
        ) from None
    return learner.eval()


def evaluate(config: Config, checkpoint: str = "best", gif: bool | None = None) -> dict[str, Any]:
    """Episode returns and success rate of the trained policy (and of the expert when
    ``evaluate.compare_expert``); writes them to ``results.json``.

    Nothing is differentiated here: the policy's unconverged solves are reported (the
    ``unconverged_fraction`` of each result), not warned about one by one.
    """
    experiment = resolve(config)
    settings, data = experiment.evaluate, experiment.data
    make_gif = settings.gif if gif is None else gif
    common: dict[str, Any] = {
        "seed": settings.seed,
        "env_params": data.env_params,
        "max_episode_steps": settings.max_episode_steps,
        "success_angle": settings.success_angle,
        "progress": experiment.progress,
    }
    policy = load_policy(experiment, checkpoint, on_unconverged="ignore")
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
) -> dict[str, Any]:
    """Collect (or reuse) the data, train, evaluate; return where everything went."""
    experiment = resolve(config)
    dataset, reused = collect(experiment)
    result = train(experiment, restart=restart, apply_new_settings=apply_new_settings)
    evaluation = evaluate(experiment, gif=gif)
    return {
        "dataset": str(dataset),
        "dataset_reused": reused,
        "train": result.to_dict(),
        "evaluation": evaluation,
        "results": str(experiment.run_dir / "results.json"),
    }
