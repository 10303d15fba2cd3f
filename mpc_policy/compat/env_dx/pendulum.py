"""mpc.pytorch 0.0.6's pendulum model, ``mpc.env_dx.pendulum.PendulumDx``.

State (cos theta, sin theta, theta_dot), control the torque u in [-2, 2], dt = 0.05:

    theta_dot' = theta_dot + dt (3 g / (2 l) sin(theta) + 3 u / (m l^2))        (simple)
    theta_dot' = theta_dot + dt (3 g / (2 l) sin(theta + b) + 3 u / (m l^2) - d theta)
    theta'     = theta + dt theta_dot'

with params (g, m, l) = (10, 1, 1), or (g, m, l, d, b) = (10, 1, 1, 0, 0) when not simple.
The cost of ``get_true_obj`` is the quadratic with weights q = (1, 1, 0.1, 0.001) and linear
term p = -sqrt(w) * goal on the state, goal (1, 0, 0) (upright).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.compat.env_dx.common import check_params, goal_cost, pole_frame

__all__ = ["PendulumDx"]


class PendulumDx(nn.Module):
    """The pendulum: dx(x [N, 3] or [3], u [N, 1] or [1]) -> next state.

    Args:
        params: (g, m, l) or, with ``simple=False``, (g, m, l, d, b); mpc.pytorch's defaults
            if None. Pass a tensor that requires grad to learn them.
        simple: without damping d and gravity bias b.
    """

    def __init__(self, params: Tensor | None = None, simple: bool = True) -> None:
        super().__init__()
        self.simple = simple
        self.max_torque, self.dt = 2.0, 0.05
        self.n_state, self.n_ctrl = 3, 1
        if params is None:
            params = torch.tensor((10.0, 1.0, 1.0) if simple else (10.0, 1.0, 1.0, 0.0, 0.0))
        self.params = check_params(params, 3 if simple else 5)
        self.goal_state = torch.tensor([1.0, 0.0, 0.0])
        self.goal_weights = torch.tensor([1.0, 1.0, 0.1])
        self.ctrl_penalty = 0.001
        self.lower, self.upper = -2.0, 2.0
        self.mpc_eps = 1e-3
        self.linesearch_decay = 0.2
        self.max_linesearch_iter = 5

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next states [N, 3] (or [3]) for states x [N, 3] and torques u [N, 1]."""
        single = x.dim() == 1
        if single:
            x, u = x.unsqueeze(0), u.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != 3 or u.dim() != 2 or u.shape != (x.shape[0], 1):
            raise ValueError(
                f"x, u: expected shapes (N, 3) and (N, 1), received {tuple(x.shape)} and "
                f"{tuple(u.shape)}"
            )
        params = self.params.to(x.device)
        g, m, l = params[0], params[1], params[2]
        torque = u[:, 0].clamp(-self.max_torque, self.max_torque)
        cos, sin, theta_dot = x.unbind(1)
        theta = torch.atan2(sin, cos)
        if self.simple:
            gravity = 3.0 * g / (2.0 * l) * sin
            damping = torch.zeros_like(theta)
        else:
            gravity = 3.0 * g / (2.0 * l) * torch.sin(theta + params[4])
            damping = params[3] * theta
        theta_dot = theta_dot + self.dt * (gravity + 3.0 * torque / (m * l**2) - damping)
        theta = theta + self.dt * theta_dot
        state = torch.stack([torch.cos(theta), torch.sin(theta), theta_dot], dim=1)
        return state[0] if single else state

    def get_frame(self, x: Tensor, ax: Any = None) -> Any:
        """A matplotlib drawing (fig, ax) of the pendulum at state x [3]."""
        cos, sin, _ = x.detach().reshape(-1).tolist()
        length = float(self.params[2])
        return pole_frame(0.0, sin * length, cos * length, 1.2 * length, ax)

    def get_true_obj(self) -> tuple[Tensor, Tensor]:
        """The swing-up cost: diagonal weights q [4] and linear term p [4] on [x; u]."""
        return goal_cost(self.goal_weights, self.goal_state, self.ctrl_penalty, self.n_ctrl)
