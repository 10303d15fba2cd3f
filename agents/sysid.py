"""The paper's ``sysid`` baseline: fit the dynamics to next-state transitions, then plan.

System identification minimizes the one-step prediction error on the expert's planned
trajectories (the paper's code fits the states of the expert's nominal plans):

    L_sysid(theta) = E || f(x_t, u_t; theta) - x_{t+1} ||^2,   t = 1..T-1,

knowing the cost. The controller is then the MPC with the fitted dynamics and the known
cost; its imitation loss (the figure compared with mpc.dx) is measured as for the other
methods, but never differentiated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpc_policy.agents.bc import Batch, ImitationObjective, WarmStarts, imitation_loss
from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import SolverInfo

__all__ = ["SysIdObjective", "transition_loss"]


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


class SysIdObjective(ImitationObjective):
    """Train on the transition loss of the policy's dynamics; predict with the policy.

    Args:
        learner: the ``MPCPolicy`` whose dynamics parameters are fitted.
        warm_starts: per-sample warm starts of the policy's solves, or None.
    """

    def __init__(self, learner: nn.Module, warm_starts: WarmStarts | None) -> None:
        if not isinstance(learner, MPCPolicy):
            raise TypeError(f"learner: expected an MPCPolicy, received {type(learner).__name__}")
        super().__init__(learner, warm_starts)
        self.policy: MPCPolicy = learner

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
