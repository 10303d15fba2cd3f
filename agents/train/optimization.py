"""What a trainer steps: the optimizer over the learned parameter groups, its schedule, and
which groups move in which epoch.

The paper's choices (Amos et al., 2018, section 5.3): RMSprop (lr 1e-2, alpha 0.5) for the
MPC learners and sysid, Adam (lr 1e-4) for the network; optionally a cosine decay of the
learning rate over all steps. A learned cost's goal and weights may take turns, K epochs
each, goal first (the paper found learning both at once unstable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Optimization", "OptimizerSettings"]


@dataclass(frozen=True)
class OptimizerSettings:
    """A resolved optimizer choice.

    Attributes:
        kind: "rmsprop" or "adam".
        lr: learning rate, > 0.
        alpha: RMSprop's smoothing constant.
        scheduler: "none" or "cosine" (decay to 0 over ``total_steps``).
    """

    kind: Literal["rmsprop", "adam"]
    lr: float
    alpha: float = 0.5
    scheduler: Literal["none", "cosine"] = "none"

    @classmethod
    def paper_default(
        cls,
        network: bool,
        kind: Literal["rmsprop", "adam"] | None = None,
        lr: float | None = None,
        alpha: float = 0.5,
        scheduler: Literal["none", "cosine"] = "none",
    ) -> OptimizerSettings:
        """The given choices, the paper's where None: Adam 1e-4 for a network, RMSprop
        1e-2 otherwise."""
        return cls(
            kind or ("adam" if network else "rmsprop"),
            lr or (1e-4 if network else 1e-2),
            alpha,
            scheduler,
        )


class Optimization:
    """An optimizer and scheduler over named parameter groups, with alternation.

    Args:
        groups: the learned parameters by group name (e.g. "dynamics", "cost_goal",
            "cost_weights"); at least one parameter.
        settings: the optimizer choice.
        total_steps: optimizer steps of the whole run (the cosine schedule's length).
        alternate_every: K > 0: "cost_goal" and "cost_weights" take turns, K epochs each,
            goal first; None or 0: every group moves every epoch.
    """

    def __init__(
        self,
        groups: dict[str, list[nn.Parameter]],
        settings: OptimizerSettings,
        total_steps: int,
        alternate_every: int | None = None,
    ) -> None:
        params = [p for group in groups.values() for p in group]
        if not params:
            raise ValueError("groups: expected at least one learned parameter, received none")
        self.groups = groups
        self.alternate_every = alternate_every
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=settings.lr)
            if settings.kind == "adam"
            else torch.optim.RMSprop(params, lr=settings.lr, alpha=settings.alpha)
        )
        self.scheduler: torch.optim.lr_scheduler.CosineAnnealingLR | None = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
            if settings.scheduler == "cosine"
            else None
        )

    def active_groups(self, epoch: int) -> set[str]:
        """The groups that move in ``epoch`` (1-based)."""
        every = self.alternate_every
        names = set(self.groups)
        if every and {"cost_goal", "cost_weights"} <= names:
            names.discard("cost_weights" if ((epoch - 1) // every) % 2 == 0 else "cost_goal")
        return names

    def step(self, epoch: int) -> None:
        """One optimizer (and scheduler) step on the gradients of the active groups."""
        active = self.active_groups(epoch)
        for name, group in self.groups.items():
            if name not in active:
                for p in group:
                    p.grad = None
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` (a drop on a plateau; without a
        schedule, which would set the rate itself)."""
        if self.scheduler is not None:
            raise ValueError("scale_lr: the learning rate follows a schedule here")
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }
