"""The LQR problem at a fixed point of box-DDP whose implicit gradient is the MPC's.

At a fixed point (x, u) of the nonlinear problem the solution of the LQR problem

    min  sum_t 1/2 tau_t' H_t tau_t + c_t' tau_t   s.t.  x_{t+1} = F_t tau_t + f_t, the box

is (x, u) itself, and its implicit derivative (``lqr.implicit_lqr``) is the derivative of the
MPC's solution: with the Hessian of the Lagrangian (``grad_method="exact"``) or the cost
Hessian alone (``"paper"``, eq. (19)). c and f carry the graph to the modules' parameters.
Time-major shapes: x (T, B, n), u (T, B, m).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mpc_policy._warnings import warn_regularized
from mpc_policy.grad.implicit_lqr import implicit_lqr
from mpc_policy.options import MPCOptions
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics
from mpc_policy.problem.linearize import cost_derivatives, dynamics_curvature, dynamics_jacobian
from mpc_policy.solve.backend import Kernels
from mpc_policy.solve.ddp import DDPResult

__all__ = ["implicit_solution", "lqr_data_at"]


def lqr_data_at(
    cost: CheckedCost,
    dynamics: CheckedDynamics,
    x: Tensor,
    u: Tensor,
    options: MPCOptions,
    kernels: Kernels,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The LQR problem whose solution is the fixed point and whose gradient is the MPC's.

    Args:
        x: (T, B, n), u: (T, B, m) the fixed point (constants).
        kernels: the backend of the costates.

    Returns:
        C (T, B, d, d) and F (T-1, B, n, d) without graph (they only shape the backward
        solve), c (T, B, d) and f (T-1, B, n) with the graph to the parameters, and the
        Hessian used for the factorization.
    """
    tau = torch.cat([x, u], dim=-1)
    H, g = cost_derivatives(cost, x, u, create_graph=True)
    F = dynamics_jacobian(
        dynamics,
        x[:-1],
        u[:-1],
        method=options.jacobian,
        eps=options.finite_diff_eps,
        create_graph=options.grad_method == "paper",
        row_copies=True,
    )
    if options.grad_method == "paper":
        # differentiate the last convex approximation, eqs. (12), (13), (19)
        f_next = dynamics(x[:-1], u[:-1])
        c = g - (H @ tau.unsqueeze(-1)).squeeze(-1)
        f = f_next - (F @ tau[:-1].unsqueeze(-1)).squeeze(-1)
        return H, c, F, f, H.detach()
    # exact: the optimality conditions dC/dtau + F' lam_next - [lam; 0] = 0 and
    # f(tau) = x_next, differentiated at the solution with the Lagrangian's Hessian
    lam = kernels.costates_from_gradient(g.detach(), F)
    f_next, weighted, curvature = dynamics_curvature(
        dynamics, x[:-1], u[:-1], lam[1:], create_graph=True, row_copies=True
    )
    H_lagrangian = H.detach().clone()
    H_lagrangian[:-1] += curvature
    c = g + torch.cat([weighted - weighted.detach(), torch.zeros_like(g[-1:])])
    c = c - (H_lagrangian @ tau.unsqueeze(-1)).squeeze(-1)
    f = f_next - (F @ tau[:-1].unsqueeze(-1)).squeeze(-1)
    return H_lagrangian, c, F, f, H_lagrangian


def implicit_solution(
    cost: CheckedCost,
    dynamics: CheckedDynamics,
    x_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    result: DDPResult,
    converged: Tensor,
    rows: Tensor | None,
    options: MPCOptions,
    kernels: Kernels,
) -> tuple[Tensor, Tensor]:
    """The fixed point of the elements ``rows`` (all if None), with its implicit gradient.

    Args:
        cost, dynamics: the modules, restricted to ``rows`` when given.
        x_init: (B, n) initial states.
        lower, upper: (T, B, m) control bounds or None.
        result: the box-DDP solve of all B elements.
        converged: (B,) the converged elements (a regularization of theirs warns).
        rows: (k,) the elements to differentiate, or None for all.
        options: solver options (``grad_method``, ``jacobian``, ``regularization``).
        kernels: the backend of the factorization.

    Returns:
        x (T, k, n) and u (T, k, m), equal to the solution, differentiable with respect to
        x_init, the bounds and the modules' parameters.
    """
    x, u = result.x.clone(), result.u.clone()
    free = result.gains.free.clone()
    if rows is not None:
        x_init, x, u, free = x_init[rows], x[:, rows], u[:, rows], free[:, rows]
        converged = converged[rows]
        lower = None if lower is None else lower[:, rows]
        upper = None if upper is None else upper[:, rows]
    C, c, F, f, H = lqr_data_at(cost, dynamics, x, u, options, kernels)
    H_data, F_data = H.detach().contiguous(), F.detach().contiguous()
    gains = kernels.factorize(
        H_data, F_data, free.contiguous(), regularization=options.regularization
    )
    # at a converged fixed point an indefinite Q_uu,ff means a saddle, not a minimum
    warn_regularized(gains.shift, converged)
    # the backward's numerics read detached, contiguous copies made once here
    data = (H_data, c.detach().contiguous(), F_data)
    return implicit_lqr(x_init, C, c, F, f, lower, upper, x, u, gains, options.backend, data)
