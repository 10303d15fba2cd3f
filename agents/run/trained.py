"""The trained learner of an experiment: a checkpoint, checked to be this experiment's, loaded
into its learner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mpc_policy.options import MPCOptions
from mpc_policy.policy import MPCPolicy

from ..train.checkpoint import load_checkpoint
from .experiment import Experiment

__all__ = ["LEARNER_IDENTITY", "restore_learner"]

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


def restore_learner(
    experiment: Experiment, learner: nn.Module, checkpoint: str, on_unconverged: str | None
) -> nn.Module:
    """The trained learner: ``checkpoint`` ("best", "last" or a file path) loaded into
    ``learner`` (this experiment's, ``mpc_policy.agents.run.experiment.prepare``), its
    solver's ``on_unconverged`` overridden when given (e.g. "ignore" for rollouts), in
    evaluation mode.

    Raises:
        ValueError: the checkpoint was saved by a run of another system, method, horizon
            or network size (its saved config says so), or its tensors do not fit.
    """
    path = (
        experiment.run_dir / "checkpoints" / f"{checkpoint}.pt"
        if checkpoint in ("best", "last")
        else Path(checkpoint)
    )
    state = load_checkpoint(path)
    _check_learner_identity(path, state.get("config"), experiment)
    if on_unconverged is not None and isinstance(learner, MPCPolicy):
        learner.options = MPCOptions.from_kwargs(learner.options, on_unconverged=on_unconverged)
    try:
        learner.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"checkpoint {str(path)!r}: does not fit this experiment's learner ({first})"
        ) from None
    return learner.eval()
