"""One behaviour-cloning trial of sections 5.3 and 5.4, run on the trainers of ``agents``.

A trial config (a flat, JSON-serializable dict written by the experiment's YAML) names a
system, a method (nn, sysid, mpc.dx, mpc.cost, mpc.cost.dx), a training-set size and a
seed, plus the dataset, the learner's starting point and the optimizer. ``bc_trial``
turns it into an ``mpc_policy.agents.config.ExperimentConfig`` and trains with
``mpc_policy.agents.run.pipeline.train`` (checkpointed and resumable), whose result holds the
per-epoch curves (in memory, float64; tensorboard is an output only). For learners of the
dynamics the curves include the next-state (sysid) loss of the learned model on the test
trajectories at every epoch (``loss/test_sysid``).

The expert dataset of a system is shared by all trials of an experiment: collect it once,
before the trials start in parallel, with ``prepare_datasets``. Per-system settings
(dataset, the learner's starting dynamics and cost) live under ``trial.systems.<system>``
in an experiment's config and per-method ones under ``trial.method_overrides.<method>``;
``resolve_trials`` merges them into each trial.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from ..learners.models import COST_METHODS, DYNAMICS_METHODS
from ..run.pipeline import collect, train
from .runner import (
    SweepConfig,
    build_parser,
    config_from_args,
    run_trials,
)
from .sweep import TrialRecord, trial_key

__all__ = [
    "bc_trial",
    "experiment_config",
    "prepare_datasets",
    "resolve_trials",
    "run_bc_sweep",
    "step_budget",
    "steps_per_epoch",
]


def _data_config(dataset: dict[str, Any]) -> DataConfig:
    return DataConfig(
        n_train=int(dataset["n_train"]),
        n_val=int(dataset["n_val"]),
        n_test=int(dataset["n_test"]),
        episode_steps=1,
        seed=int(dataset["seed"]),
        horizon=int(dataset["horizon"]),
        env_params={k: float(v) for k, v in (dataset.get("env_params") or {}).items()},
        path=str(dataset["path"]),
    )


def dynamics_init(config: dict[str, Any]) -> dict[str, float]:
    """The learner's starting physical parameters: ``dynamics_init`` (center), spread
    uniformly by ``dynamics_init_width`` (full width, per parameter) with the trial's seed
    (the paper's windy-pendulum runs start at (5, 1, 1) + (3, 1, 1) (U(0, 1) - 1/2))."""
    center = {k: float(v) for k, v in config["dynamics_init"].items()}
    width = config.get("dynamics_init_width") or {}
    rng = np.random.default_rng(config["seed"])
    return {k: v + float(width.get(k, 0.0)) * (rng.random() - 0.5) for k, v in center.items()}


def steps_per_epoch(config: dict[str, Any]) -> int:
    """Optimizer steps in one epoch of a trial: ceil(n_train / batch_size)."""
    return -(-int(config["n_train"]) // int(config["batch_size"]))


def step_budget(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's epochs and early stopping, as ``TrainConfig`` fields.

    With ``max_steps`` the budget is counted in optimizer steps, so that every training-set
    size gets the same number of updates: an epoch is ceil(n_train / batch_size) steps,
    ``max_steps``, ``eval_steps`` (how often the validation loss is computed) and
    ``patience_steps`` (stop once the validation loss has not fallen by ``min_delta``,
    relative, below its best for that many steps; the first ``lr_drops`` times the
    learning rate is divided by 10 instead) are rounded up to whole epochs. Without it,
    ``epochs`` epochs and no early stopping.
    """
    if "max_steps" not in config:
        return {"epochs": int(config["epochs"])}
    per_epoch = steps_per_epoch(config)

    def epochs(key: str) -> int:
        steps = int(config[key])
        if steps < 1:
            raise ValueError(f"{key}: expected an integer >= 1, received {steps}")
        return -(-steps // per_epoch)

    budget: dict[str, Any] = {"epochs": epochs("max_steps")}
    if config.get("eval_steps") is not None:
        budget["eval_every"] = epochs("eval_steps")
    if config.get("patience_steps") is not None:
        budget["patience"] = epochs("patience_steps")
        budget["min_delta"] = float(config.get("min_delta", 0.0))
        if config.get("lr_drops"):
            budget["lr_drops"] = int(config["lr_drops"])
    return budget


def experiment_config(config: dict[str, Any]) -> ExperimentConfig:
    """The ``agents`` experiment of one trial config.

    Keys read: system, method, n_train, seed, dataset (n_train, n_val, n_test, seed,
    horizon, env_params, path), dynamics_init, dynamics_init_width, cost_init (weights,
    goal), alternate_every, solver, hidden_size, epochs, batch_size, optimizer (per kind:
    optimizer, lr, alpha, scheduler), run_dir; optionally a budget in optimizer steps,
    the same for every training-set size: max_steps (instead of epochs), eval_steps,
    patience_steps, min_delta and lr_drops (see ``step_budget``).
    """
    method = config["method"]
    model = ModelConfig(
        method=method,
        dynamics_init=dynamics_init(config) if method in DYNAMICS_METHODS else {},
        cost_init=config["cost_init"] if method in COST_METHODS else None,
        alternate_every=config.get("alternate_every"),
        solver=dict(config.get("solver") or {}),
        hidden_size=int(config.get("hidden_size", 256)),
    )
    optimizer = config.get("optimizer") or {}
    settings = optimizer.get("nn" if method == "nn" else "mpc", {})
    training = TrainConfig(
        **step_budget(config),
        batch_size=int(config["batch_size"]),
        optimizer=settings.get("optimizer"),
        lr=settings.get("lr"),
        alpha=float(settings.get("alpha", 0.5)),
        scheduler=settings.get("scheduler", "none"),
        seed=int(config["seed"]),
        n_train=int(config["n_train"]),
        progress=False,
    )
    return ExperimentConfig(
        name=f"{config['system']}-{method}-n{config['n_train']}-seed{config['seed']}",
        system=config["system"],
        data=_data_config(config["dataset"]),
        model=model,
        train=training,
        output_dir=str(config["run_dir"]),
    )


def resolve_trials(config: SweepConfig) -> list[dict[str, Any]]:
    """The grid's trials with their system's settings merged in, the shared dataset file
    of their system and a run folder of their own (named by the trial's hash)."""
    trials = []
    for trial in config.trials():
        systems = trial.pop("systems")
        overrides = trial.pop("method_overrides", None) or {}
        system = trial["system"]
        if system not in systems:
            raise ValueError(
                f"trial.systems: no settings for system {system!r}; found {sorted(systems)}"
            )
        trial = {**trial, **systems[system], **overrides.get(trial["method"], {})}
        # a trial's identity holds the optimizer settings of its own kind only
        kind = "nn" if trial["method"] == "nn" else "mpc"
        optimizer = trial.get("optimizer") or {}
        trial["optimizer"] = {kind: optimizer[kind]} if kind in optimizer else {}
        dataset = dict(trial["dataset"])
        dataset["path"] = str(config.output_dir / "data" / f"{system}-{trial_key(dataset)}.npz")
        trial["dataset"] = dataset
        trial["run_dir"] = str(config.output_dir / "runs" / trial_key(trial))
        trials.append(trial)
    return trials


def prepare_datasets(configs: Iterable[dict[str, Any]]) -> list[Path]:
    """Collect (or reuse) the dataset of every distinct (system, dataset) of the trials."""
    done: dict[str, Path] = {}
    for config in configs:
        dataset = config["dataset"]
        if dataset["path"] in done:
            continue
        experiment = ExperimentConfig(
            name=f"dataset-{config['system']}",
            system=config["system"],
            data=_data_config(dataset),
            output_dir=str(Path(dataset["path"]).parent),
        )
        done[dataset["path"]], _ = collect(experiment)
    return list(done.values())


def bc_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Train one learner; return the paper's figure and the per-epoch curves.

    Returns:
        ``test_loss_at_best_val`` (the test imitation loss at the epoch of the best
        validation loss, Figure 4's number), ``best_epoch``, ``best_val_loss``,
        ``epochs_done``, ``stopped_early`` (patience ended the run), ``epoch`` (the
        evaluated epochs) and on them the curves ``train_loss``, ``val_loss``,
        ``test_loss`` (imitation losses, epoch 0 is the starting point), for dynamics
        learners ``test_sysid_loss`` (next-state MSE on the test trajectories), and the
        final ``params`` and ``model_errors``.
    """
    experiment = experiment_config(config)
    result = train(experiment)
    curves = result.curves
    epochs = sorted(curves["loss/val"])
    out: dict[str, Any] = {
        "test_loss_at_best_val": result.test_loss_at_best_val,
        "best_epoch": result.best_epoch,
        "epochs_done": result.epochs_done,
        "stopped_early": result.stopped_early,
        "best_val_loss": result.best_val_loss,
        "epoch": epochs,
        "train_loss": [curves["loss/train"][e] for e in epochs],
        "val_loss": [curves["loss/val"][e] for e in epochs],
        "test_loss": [curves["loss/test"][e] for e in epochs],
    }
    if experiment.model.method in DYNAMICS_METHODS:
        out["test_sysid_loss"] = [curves["loss/test_sysid"][e] for e in epochs]
    last = epochs[-1]
    for prefix, key in (("params/", "params"), ("model_error/", "model_errors")):
        out[key] = {
            tag.removeprefix(prefix): values[last]
            for tag, values in curves.items()
            if tag.startswith(prefix) and last in values
        }
    return out


def run_bc_sweep(
    description: str, default_config: str, argv: Sequence[str] | None
) -> tuple[SweepConfig, list[TrialRecord]]:
    """The command line of a behaviour-cloning sweep: parse it, resolve the trials, collect
    their datasets (not with ``--finished-only``), run (or reuse) the trials."""
    args = build_parser(description, default_config).parse_args(argv)
    config = config_from_args(args)
    trials = resolve_trials(config)
    if not args.finished_only:  # summarizing stored trials needs no dataset
        prepare_datasets(trials)
    return config, run_trials(bc_trial, config, trials, args)
