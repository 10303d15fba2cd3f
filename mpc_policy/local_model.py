"""The LQR model of a problem around a trajectory, and the box-DDP step it gives.

Around a trajectory x (B, T, n), u (B, T, m), tau_t = [x_t; u_t], box-DDP replaces the
problem by its local model (the paper's Module 2):

    cost:      C(tau) ~ 1/2 tau' C_t tau + c_t' tau + const,  C_t = d2C/dtau2,
               c_t = dC/dtau - C_t tau_t                                  (``quadratize``)
    dynamics:  f(tau) ~ F_t tau + f_t,  F_t = df/dtau,  f_t = f(tau_t) - F_t tau_t
                                                                          (``linearize``)

and takes the step du_t = k_t + K_t dx_t of the box-LQR backward pass on it (Appendix A,
``feedback_gains``), with each du_t kept within [du_lower_t, du_upper_t]. ``lqr_solve`` and
``MPC`` run these inside; they are public for a user who writes an own outer loop (e.g.
mpc.pytorch's ``LQRStep``, ``mpc_policy.compat``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from mpc_policy._warnings import warn_regularized
from mpc_policy.numerics.riccati import backward_recursion
from mpc_policy.problem.contract import CheckedDynamics
from mpc_policy.problem.linearize import cost_derivatives, dynamics_jacobian

__all__ = ["feedback_gains", "linearize", "quadratize"]


def quadratize(
    cost: nn.Module, x: Tensor, u: Tensor, create_graph: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Quadratic model of a cost along a trajectory.

    Args:
        cost: cost(x (B, T, n), u (B, T, m)) -> (B, T) (its ``quadratize``, if any, is used).
        x: (B, T, n) states.
        u: (B, T, m) controls.
        create_graph: keep the graph to the cost's parameters.

    Returns:
        C (B, T, n+m, n+m), c (B, T, n+m) and the per-step costs (B, T) at the trajectory.
    """
    x, u = x.detach(), u.detach()
    H, g = cost_derivatives(cost, x.transpose(0, 1), u.transpose(0, 1), create_graph=create_graph)
    H, g = H.transpose(0, 1), g.transpose(0, 1)
    tau = torch.cat([x, u], dim=-1)
    with nullcontext() if create_graph else torch.no_grad():
        values = cost(x, u)
    return H, g - (H @ tau.unsqueeze(-1)).squeeze(-1), values


def linearize(
    dynamics: nn.Module,
    x: Tensor,
    u: Tensor,
    jacobian: str = "autograd",
    create_graph: bool = False,
) -> tuple[Tensor, Tensor]:
    """Affine model of a dynamics module along a trajectory.

    Args:
        dynamics: dynamics(x (N, n), u (N, m)) -> (N, n), called on the rows of all steps
            (batch index fastest, as ``MPC`` calls it).
        x: (B, T, n) states.
        u: (B, T, m) controls.
        jacobian: "autograd", "finite_diff" or "analytic" (``dynamics.jacobian``), as ``MPC``'s
            option.
        create_graph: keep the graph to the module's parameters.

    Returns:
        F (B, T-1, n, n+m) and f (B, T-1, n).
    """
    model = CheckedDynamics(dynamics, x.shape[-1], u.shape[-1])
    x_t, u_t = x.detach()[:, :-1].transpose(0, 1), u.detach()[:, :-1].transpose(0, 1)
    F = dynamics_jacobian(model, x_t, u_t, method=jacobian, create_graph=create_graph)
    tau = torch.cat([x_t, u_t], dim=-1)
    with nullcontext() if create_graph else torch.no_grad():
        f = model(x_t, u_t) - (F @ tau.unsqueeze(-1)).squeeze(-1)
    return F.transpose(0, 1), f.transpose(0, 1)


def feedback_gains(
    C: Tensor, g: Tensor, F: Tensor, du_lower: Tensor | None, du_upper: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The box-LQR backward pass: the step du_t = k_t + K_t dx_t of one box-DDP iteration.

    Args:
        C: (B, T, n+m, n+m) quadratic terms of the model (symmetric).
        g: (B, T, n+m) gradient of the model's objective at the nominal, C_t tau_t + c_t.
        F: (B, T-1, n, n+m) dynamics Jacobians.
        du_lower, du_upper: (B, T, m) bounds on the control step (both or neither), or None.

    Returns:
        K (B, T, m, n) feedback gains and k (B, T, m) steps; k_t is the box QP's solution, and
        K_t is zero on the rows of the controls it clamps.
    """
    lower, upper = (None if b is None else b.transpose(0, 1) for b in (du_lower, du_upper))
    gains = backward_recursion(
        C.transpose(0, 1), g.transpose(0, 1), F.transpose(0, 1), lower, upper
    )
    warn_regularized(gains.shift, None)
    return gains.K.transpose(0, 1), gains.k.transpose(0, 1)
