"""Local models of mpc.pytorch-style modules along a time-major trajectory.

Around a trajectory x [T, B, n], u [T, B, m], tau_t = [x_t; u_t]:

    cost:      C(tau) ~ 1/2 tau' C_t tau + c_t' tau + const,  C_t = d2C/dtau2,
               c_t = dC/dtau - C_t tau_t                        (``approximate_cost``)
    dynamics:  f(tau) ~ F_t tau + f_t,  F_t = df/dtau,  f_t = f(tau_t) - F_t tau_t
                                                                (``linearize_dynamics``)

These are what mpc.pytorch's ``MPC.approximate_cost`` and ``MPC.linearize_dynamics``
return; the derivatives come from ``mpc_policy.problem.linearize`` (vectorized, in one call).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from mpc_policy.compat.modules import RowDynamics
from mpc_policy.problem.linearize import cost_derivatives, dynamics_jacobian

__all__ = ["approximate_cost", "linearize_dynamics"]


def approximate_cost(
    cost: nn.Module, x: Tensor, u: Tensor, diff: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Quadratic model of a per-step cost module along a trajectory.

    Args:
        cost: module cost(x (B, T, n), u (B, T, m)) -> (B, T) (e.g. a ``RowCost``).
        x: [T, B, n] states.
        u: [T, B, m] controls.
        diff: keep the graph to the module's parameters.

    Returns:
        C [T, B, n+m, n+m], c [T, B, n+m] and the costs [T, B] at the trajectory.
    """
    x, u = x.detach(), u.detach()
    H, g = cost_derivatives(cost, x, u, create_graph=diff)
    tau = torch.cat([x, u], dim=-1)
    c = g - (H @ tau.unsqueeze(-1)).squeeze(-1)
    with nullcontext() if diff else torch.no_grad():
        values = cost(x.transpose(0, 1), u.transpose(0, 1)).transpose(0, 1)
    return H, c, values


def linearize_dynamics(
    dynamics: nn.Module, x: Tensor, u: Tensor, method: str, diff: bool
) -> tuple[Tensor, Tensor]:
    """Affine model of a row-wise dynamics module along a trajectory.

    Args:
        dynamics: module dx(x [N, n], u [N, m]) -> [N, n].
        x: [T, B, n] states.
        u: [T, B, m] controls.
        method: "autograd", "finite_diff" or "analytic" (the module's ``grad_input``).
        diff: keep the graph to the module's parameters.

    Returns:
        F [T-1, B, n, n+m] and f [T-1, B, n].
    """
    model = RowDynamics(dynamics)
    x, u = x.detach(), u.detach()
    F = dynamics_jacobian(model, x[:-1], u[:-1], method=method, create_graph=diff)
    tau = torch.cat([x[:-1], u[:-1]], dim=-1)
    with nullcontext() if diff else torch.no_grad():
        f = model(x[:-1], u[:-1]) - (F @ tau.unsqueeze(-1)).squeeze(-1)
    return F, f
