"""mpc.pytorch 0.0.6's cart-pole model, ``mpc.env_dx.cartpole.CartpoleDx``.

State (x, x_dot, cos theta, sin theta, theta_dot), control the force u in [-100, 100],
dt = 0.05, params (gravity, cart mass, pole mass, half-length) = (9.8, 1, 0.1, 0.5):

    push     = (u + m_p l theta_dot^2 sin(theta)) / (m_c + m_p)
    theta_dd = (g sin(theta) - cos(theta) push) / (l (4/3 - m_p cos(theta)^2 / (m_c + m_p)))
    x_dd     = push - m_p l theta_dd cos(theta) / (m_c + m_p)

then x, x_dot, theta, theta_dot each advance by dt times their old derivative (explicit
Euler). The cost of ``get_true_obj`` weighs (0.1, 0.1, 1, 1, 0.1) on the state, 0.001 on
u, with the goal upright at rest at the origin.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.compat.env_dx.common import check_params, goal_cost, pole_frame

__all__ = ["CartpoleDx"]


class CartpoleDx(nn.Module):
    """The cart-pole: dx(x [N, 5] or [5], u [N, 1] or [1]) -> next state.

    Args:
        params: (gravity, cart mass, pole mass, half-length); mpc.pytorch's if None.
    """

    def __init__(self, params: Tensor | None = None) -> None:
        super().__init__()
        self.n_state, self.n_ctrl = 5, 1
        if params is None:
            params = torch.tensor((9.8, 1.0, 0.1, 0.5))
        self.params = check_params(params, 4)
        self.force_mag = 100.0
        self.theta_threshold_radians = torch.pi
        self.x_threshold = 2.4
        self.max_velocity = 10
        self.dt = 0.05
        self.lower, self.upper = -self.force_mag, self.force_mag
        self.goal_state = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
        self.goal_weights = torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1])
        self.ctrl_penalty = 0.001
        self.mpc_eps = 1e-4
        self.linesearch_decay = 0.5
        self.max_linesearch_iter = 2

    def forward(self, state: Tensor, u: Tensor) -> Tensor:
        """Next states [N, 5] (or [5]) for states [N, 5] and forces u [N, 1]."""
        single = state.dim() == 1
        if single:
            state, u = state.unsqueeze(0), u.unsqueeze(0)
        if state.dim() != 2 or state.shape[1] != 5 or u.dim() != 2 or u.shape[0] != state.shape[0]:
            raise ValueError(
                f"state, u: expected shapes (N, 5) and (N, 1), received {tuple(state.shape)} "
                f"and {tuple(u.shape)}"
            )
        # in the state's dtype: a float64 problem computes in float64 (upstream multiplied its
        # float32 parameters in float32), and the model traces to the compiled path
        params = self.params.to(device=state.device, dtype=state.dtype)
        gravity, cart_mass, pole_mass, length = params.unbind()
        total_mass = cart_mass + pole_mass
        force = u[:, 0].clamp(-self.force_mag, self.force_mag)
        x, x_dot, cos, sin, theta_dot = state.unbind(1)
        theta = torch.atan2(sin, cos)
        push = (force + pole_mass * length * theta_dot**2 * sin) / total_mass
        theta_acc = (gravity * sin - cos * push) / (
            length * (4.0 / 3.0 - pole_mass * cos**2 / total_mass)
        )
        x_acc = push - pole_mass * length * theta_acc * cos / total_mass
        theta = theta + self.dt * theta_dot
        out = torch.stack(
            [
                x + self.dt * x_dot,
                x_dot + self.dt * x_acc,
                torch.cos(theta),
                torch.sin(theta),
                theta_dot + self.dt * theta_acc,
            ],
            dim=1,
        )
        return out[0] if single else out

    def get_frame(self, state: Tensor, ax: Any = None) -> Any:
        """A matplotlib drawing (fig, ax) of the cart-pole at state [5]."""
        x, _, cos, sin, _ = state.detach().reshape(-1).tolist()
        length = float(self.params[3])
        return pole_frame(x, sin * length, cos * length, 2.0 * length, ax)

    def get_true_obj(self) -> tuple[Tensor, Tensor]:
        """The swing-up cost: diagonal weights q [6] and linear term p [6] on [x; u]."""
        return goal_cost(self.goal_weights, self.goal_state, self.ctrl_penalty, self.n_ctrl)
