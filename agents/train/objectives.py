"""What a learner predicts and minimizes: the imitation objective of behaviour cloning.

An ``Objective`` maps a ``Batch`` of expert data to the learner's predicted nominal action
sequences and to the training loss, declares its per-epoch hook and its checkpointed state,
and reports diagnostics (distances to the truth, learned values) at the end of each epoch.
``ImitationObjective`` minimizes the imitation loss
E || u_{1:T}(x; theta) - u_{1:T}(x; theta_expert) ||^2 with an ``MPCPolicy`` (warm-started
per sample, as in the paper's code) or a network (``SequenceNetwork``); the sysid
baseline's transition loss E || f(x_t, u_t; theta) - x_{t+1} ||^2 is here too (its objective,
``SysIdObjective``, in ``sysid``). ``FirstControlObjective`` imitates the first control only,
for data without the expert's plans; ``imitation_objective`` picks the one a dataset allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import SolverInfo

from ..data.datasets import SPLITS, ExpertDataset
from ..learners.models import ModelReport, parameter_values
from ..learners.nn_baseline import SequenceNetwork

__all__ = [
    "Batch",
    "FirstControlObjective",
    "ImitationObjective",
    "Objective",
    "WarmStarts",
    "imitation_loss",
    "imitation_objective",
    "transition_loss",
]


@dataclass
class Batch:
    """Rows of one split: x (B, n) start states, u (B, T, m) expert nominal actions,
    x_plan (B, T, n) the expert's planned states, rows (B,) their indices in the split."""

    split: str
    rows: Tensor
    x: Tensor
    u: Tensor
    x_plan: Tensor


class Objective(Protocol):
    """What the ``Trainer`` needs of an objective."""

    @property
    def learner(self) -> nn.Module:
        """The module whose parameters are learned."""

    @property
    def monitor(self) -> str:
        """The scalar tag whose decrease ``Loop.patience`` waits for: the validation value
        of the loss being minimized."""

    def predict(self, batch: Batch) -> tuple[Tensor, SolverInfo | None]:
        """Predicted nominal actions (B, T, m) and the solver's report (None: no solver)."""

    def train_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float], SolverInfo | None]:
        """The scalar loss to minimize, scalars to log ({tag: value}), the report."""

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (1-based)."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars logged at the end of each epoch ({tag: value})."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep to resume the objective."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``."""


def imitation_loss(u: Tensor, u_expert: Tensor) -> Tensor:
    """Mean squared error per control entry between (B, T, m) sequences."""
    return (u - u_expert).pow(2).mean()


def transition_loss(dynamics: nn.Module, x_plan: Tensor, u: Tensor) -> Tensor:
    """Mean squared next-state error along trajectories.

    Args:
        dynamics: the model, dynamics(x (..., n), u (..., m)) -> (..., n).
        x_plan: (B, T, n) states of the trajectories.
        u: (B, T, m) their controls (the last one is not used).

    Returns:
        Scalar mean over B, T-1 transitions and n coordinates.
    """
    if x_plan.dim() != 3 or u.dim() != 3 or x_plan.shape[:2] != u.shape[:2]:
        raise ValueError(
            f"x_plan, u: expected shapes (B, T, n) and (B, T, m), received "
            f"{tuple(x_plan.shape)} and {tuple(u.shape)}"
        )
    predicted = dynamics(x_plan[:, :-1], u[:, :-1])
    return (predicted - x_plan[:, 1:]).pow(2).mean()


class WarmStarts:
    """Per-sample warm starts (N, T, m) for each split: a sample's solve starts where its
    last one ended (the paper's code), and all restart from zeros every few epochs."""

    def __init__(self, sizes: dict[str, int], horizon: int, n_ctrl: int) -> None:
        self.buffers = {
            s: torch.zeros(n, horizon, n_ctrl, dtype=torch.float64) for s, n in sizes.items()
        }

    def reset(self) -> None:
        for buffer in self.buffers.values():
            buffer.zero_()


class ImitationObjective:
    """Predict nominal action sequences with an ``MPCPolicy`` (warm-started per sample) or
    a ``SequenceNetwork``, and minimize the imitation loss.

    Args:
        learner: the ``MPCPolicy`` or ``SequenceNetwork``.
        warm_starts: per-sample warm starts of an MPC learner, or None (solves from zeros).
        warm_start_reset: the warm starts restart from zeros every this many epochs.
        report: distances to the truth, logged as ``model_error/<name>``.
        transitions: test (x_plan (N, T, n), u (N, T, m)): their next-state loss under the
            learner's dynamics is logged as ``loss/test_sysid``.
        val_transitions: the same of the validation split, logged as ``loss/val_sysid``.
    """

    def __init__(
        self,
        learner: nn.Module,
        warm_starts: WarmStarts | None = None,
        warm_start_reset: int = 50,
        report: ModelReport | None = None,
        transitions: tuple[Tensor, Tensor] | None = None,
        val_transitions: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        if not isinstance(learner, MPCPolicy | SequenceNetwork):
            raise TypeError(
                f"learner: expected an MPCPolicy or a SequenceNetwork, received "
                f"{type(learner).__name__}"
            )
        self.learner = learner
        self.warm_starts = warm_starts
        self.warm_start_reset = warm_start_reset
        self.report = report
        self.transitions = transitions
        self.val_transitions = val_transitions

    @property
    def monitor(self) -> str:
        """The validation imitation loss."""
        return "loss/val"

    def predict(self, batch: Batch) -> tuple[Tensor, SolverInfo | None]:
        if isinstance(self.learner, SequenceNetwork):
            return self.learner.sequences(batch.x), None
        warm = None if self.warm_starts is None else self.warm_starts.buffers[batch.split]
        solution = self.learner.plan(batch.x, None if warm is None else warm[batch.rows])
        if warm is not None:  # a NONFINITE row (NaN plan) restarts from zeros
            warm[batch.rows] = solution.u.detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return solution.u, solution.info

    def train_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float], SolverInfo | None]:
        u, info = self.predict(batch)
        loss = imitation_loss(u, batch.u)
        return loss, {"loss/train": float(loss.detach())}, info

    def start_epoch(self, epoch: int) -> None:
        if self.warm_starts is not None and (epoch - 1) % self.warm_start_reset == 0:
            self.warm_starts.reset()

    def diagnostics(self) -> dict[str, float]:
        scalars: dict[str, float] = {}
        if self.report is not None:
            errors = self.report.errors(self.learner)
            scalars.update({f"model_error/{k}": v for k, v in errors.items()})
        scalars.update({f"params/{k}": v for k, v in parameter_values(self.learner).items()})
        if isinstance(self.learner, MPCPolicy):
            for split, data in (("test", self.transitions), ("val", self.val_transitions)):
                if data is not None:
                    with torch.no_grad():
                        loss = transition_loss(self.learner.dynamics, *data)
                    scalars[f"loss/{split}_sysid"] = float(loss)
        return scalars

    def state_dict(self) -> dict[str, Any]:
        warm = self.warm_starts
        return {"warm_starts": None if warm is None else warm.buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("warm_starts")
        if self.warm_starts is not None and saved is not None:
            self.warm_starts.buffers = {k: v.clone() for k, v in saved.items()}


class FirstControlObjective(ImitationObjective):
    """Imitation of the first control only: E || u_1(x; theta) - u_expert ||^2, for data
    without the expert's plans (the learner plans over its own horizon; its first control
    is compared with the action taken).
    """

    def predict(self, batch: Batch) -> tuple[Tensor, SolverInfo | None]:
        """The learner's first controls (B, 1, m) and the solver's report."""
        u, info = super().predict(batch)
        return u[:, :1], info


def imitation_objective(
    dataset: ExpertDataset, learner: nn.Module, *, warm_start: bool = True
) -> ImitationObjective:
    """The behaviour-cloning objective the data allow: whole plans where the dataset has
    the expert's (``ImitationObjective``), the first control where it has not
    (``FirstControlObjective``, for ``import_minari`` of a foreign dataset).

    Args:
        dataset: the expert data.
        learner: an ``MPCPolicy`` (or a ``SequenceNetwork`` for data with plans).
        warm_start: warm-start each sample's solve from its last plan (an MPC learner).
    """
    plans = dataset.metadata["expert"].get("plans", True)
    warm = None
    horizon = getattr(learner, "horizon", None)
    if warm_start and isinstance(horizon, int):
        sizes = {s: len(dataset.split(s)) for s in SPLITS}
        warm = WarmStarts(sizes, horizon, int(dataset["actions"].shape[-1]))
    if plans:
        return ImitationObjective(learner, warm)
    return FirstControlObjective(learner, warm)
