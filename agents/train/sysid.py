"""The paper's ``sysid`` baseline: fit the dynamics to next-state transitions, then plan.

System identification minimizes the one-step prediction error on the expert's planned
trajectories (the paper's code fits the states of the expert's nominal plans):

    L_sysid(theta) = E || f(x_t, u_t; theta) - x_{t+1} ||^2,   t = 1..T-1,

(``transition_loss``) knowing the cost. The controller is then the MPC with the fitted
dynamics and the known cost; its imitation loss (the figure compared with mpc.dx) is
measured as for the other methods, but never differentiated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import SolverInfo

from .objectives import Batch, ImitationObjective, imitation_loss, transition_loss

__all__ = ["SysIdObjective", "transition_loss"]


class SysIdObjective(ImitationObjective):
    """Train on the transition loss of the policy's dynamics; predict with the policy.

    Arguments as ``ImitationObjective``'s; the learner must be an ``MPCPolicy``.
    """

    def __init__(self, learner: nn.Module, *args: object, **kwargs: object) -> None:
        if not isinstance(learner, MPCPolicy):
            raise TypeError(f"learner: expected an MPCPolicy, received {type(learner).__name__}")
        super().__init__(learner, *args, **kwargs)  # type: ignore[arg-type]
        self.policy: MPCPolicy = learner

    @property
    def monitor(self) -> str:
        """The validation transition loss (the loss minimized), when the validation
        transitions were given; else the validation imitation loss."""
        return "loss/val_sysid" if self.val_transitions is not None else "loss/val"

    def train_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float], SolverInfo | None]:
        dynamics = self.policy.dynamics
        loss = transition_loss(dynamics, batch.x_plan.to(torch.float64), batch.u)
        with torch.no_grad():
            u, info = self.predict(batch)
        logs = {
            "loss/train": float(imitation_loss(u, batch.u)),
            "loss/sysid_train": float(loss.detach()),
        }
        return loss, logs, info
