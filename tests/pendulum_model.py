"""A self-contained pendulum MPC problem for the solver tests (independent of envs/).

The paper's task: dt 0.05, g 10, m 1, l 1, T 20, u in [-2, 2], state (cos, sin, velocity),
cost weights (1, 1, 0.1, 0.001) on (cos, sin, velocity, u), goal upright.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mpc_policy import GoalWeightedCost


class PendulumDynamics(nn.Module):
    """Semi-implicit Euler pendulum on (cos, sin, velocity), with learnable g, m, l."""

    def __init__(self, g: float = 10.0, m: float = 1.0, l: float = 1.0, dt: float = 0.05):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g, dtype=torch.float64))
        self.m = nn.Parameter(torch.tensor(m, dtype=torch.float64))
        self.l = nn.Parameter(torch.tensor(l, dtype=torch.float64))
        self.dt = dt

    def compiled_twin(self) -> None:
        """None: the tests using this model exercise the box_ddp loop (a module without
        this method is traced to the compiled path, tests/test_traced_models.py)."""
        return None

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        cos, sin, velocity = x.unbind(-1)
        g, m, l = (p.to(x.dtype) for p in (self.g, self.m, self.l))
        theta = torch.atan2(sin, cos)
        acceleration = 3.0 * g / (2.0 * l) * sin + 3.0 / (m * l**2) * u[..., 0]
        velocity = velocity + acceleration * self.dt
        theta = theta + velocity * self.dt
        return torch.stack([torch.cos(theta), torch.sin(theta), velocity], dim=-1)

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Analytic Jacobian (..., 3, 4) with respect to (cos, sin, velocity, u)."""
        cos, sin, velocity = x.unbind(-1)
        g, m, l = (p.to(x.dtype) for p in (self.g, self.m, self.l))
        dt = self.dt
        r2 = cos**2 + sin**2
        dtheta = torch.stack(
            [-sin / r2, cos / r2, torch.zeros_like(cos), torch.zeros_like(cos)], -1
        )
        a = 3.0 * g / (2.0 * l)
        b = 3.0 / (m * l**2)
        zero = torch.zeros_like(cos)
        dvel = torch.stack([zero, a * dt + zero, 1.0 + zero, b * dt + zero], -1)
        theta = torch.atan2(sin, cos)
        velocity_next = velocity + (a * sin + b * u[..., 0]) * dt
        theta_next = theta + velocity_next * dt
        dtheta_next = dtheta + dt * dvel
        rows = [
            -torch.sin(theta_next).unsqueeze(-1) * dtheta_next,
            torch.cos(theta_next).unsqueeze(-1) * dtheta_next,
            dvel,
        ]
        return torch.stack(rows, dim=-2)


def pendulum_cost(dtype: torch.dtype = torch.float64) -> GoalWeightedCost:
    weights = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype)
    goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)
    return GoalWeightedCost(weights, goal)


def start_states(batch: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Angles ~ U(-pi/2, pi/2), velocities ~ U(-1, 1), as (cos, sin, velocity)."""
    generator = torch.Generator().manual_seed(seed)
    theta = (torch.rand(batch, generator=generator, dtype=dtype) * 2 - 1) * math.pi / 2
    velocity = torch.rand(batch, generator=generator, dtype=dtype) * 2 - 1
    return torch.stack([theta.cos(), theta.sin(), velocity], dim=-1)
