"""Exact gradients of a constrained MPC solution: implicit differentiation of its KKT conditions.

At a solution whose active constraint rows (mu > 0) and clamped controls are held as
equalities, the first-order conditions of

    min  sum_t C_t(tau_t)   s.t.  x_1 = x_init,  x_{t+1} = f(tau_t),
                                  g_i(tau_t) = 0 (active rows),  u_tj = bound_tj (clamped)

are R(z, nu; theta) = 0, z = (tau_1, ..., tau_T), nu = (lam, mu, the bound multipliers):

    dC_t/dtau + F_t' lam_{t+1} - [lam_t; 0] + G_t' mu_t + E_t' nu_t = 0   (stationarity)
    x_init - x_1,  f(tau_t) - x_{t+1},  g_active(tau_t),  u_clamped - bound  (primal rows)

Their Jacobian in (z, nu) is the KKT matrix K = [[H, A'], [A, D]]: H block-diagonal, the
Hessian of the Lagrangian (cost, lam-weighted dynamics and mu-weighted constraint
curvature); A the Jacobian of the primal rows, inactive rows zeroed with D = 1 on them (their
multiplier pinned at 0, so the size of K is the same for every element). By the implicit
function theorem dz = -[K^{-1} dR/dtheta dtheta]_z. It is built as z - s + s.detach() with
s = [K^{-1} R(z, nu; theta)]_z and K constant: R carries the graph to the parameters of the
cost, the dynamics and the constraints, to x_init and to the bounds, and autograd's backward
of the solve is one more solve with the (symmetric) K.

Dense: one LU factorization per element of a matrix of size N = T (2n + 2m + p), O(T^3)
time and O(T^2) memory (a Riccati sweep with the active rows eliminated would be O(T)).
Shapes are time-major: x (T, B, n), u (T, B, m), mu (T, B, p).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mpc_policy._warnings import user_stacklevel
from mpc_policy.numerics.adjoint import costates_from_gradient
from mpc_policy.options import MPCOptions
from mpc_policy.problem.constraints import (
    CheckedConstraints,
    constraint_curvature,
    constraint_jacobian,
)
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics
from mpc_policy.problem.linearize import cost_derivatives, dynamics_curvature, dynamics_jacobian

__all__ = ["kkt_matrix", "kkt_solution"]


def kkt_matrix(
    H: Tensor, F: Tensor, G: Tensor, active: Tensor, clamped: Tensor, n_state: int
) -> Tensor:
    """The KKT matrix (B, N, N) of the equality-constrained problem at a solution.

    Args:
        H: (T, B, d, d) Hessians of the Lagrangian, d = n + m.
        F: (T-1, B, n, d) dynamics Jacobians.
        G: (T, B, p, d) constraint Jacobians.
        active: (T, B, p) the constraint rows held as equalities.
        clamped: (T, B, m) the controls held at a bound.
        n_state: n.

    Returns:
        K, with z = (tau_1, ..., tau_T) first, then the rows of x_1 = x_init and the
        dynamics (T n), the constraints (T p) and the bounds (T m), each time-major.
    """
    T, B, d, _ = H.shape
    n, p, m = n_state, G.shape[-2], d - n_state
    Z = T * d
    dyn, con, box = Z, Z + T * n, Z + T * (n + p)
    N = box + T * m
    K = H.new_zeros(B, N, N)
    A = K[:, Z:, :Z]  # the primal rows' Jacobian, filled in place
    eye_n = torch.eye(n, dtype=H.dtype, device=H.device)
    for t in range(T):
        K[:, t * d : (t + 1) * d, t * d : (t + 1) * d] = H[t]
        A[:, t * n : (t + 1) * n, t * d : t * d + n] = -eye_n
        if t < T - 1:
            A[:, (t + 1) * n : (t + 2) * n, t * d : (t + 1) * d] = F[t]
        rows = con - Z + t * p
        A[:, rows : rows + p, t * d : (t + 1) * d] = G[t] * active[t].unsqueeze(-1).to(H.dtype)
        for j in range(m):
            A[:, box - Z + t * m + j, t * d + n + j] = clamped[t, :, j].to(H.dtype)
    K[:, :Z, Z:] = A.transpose(-1, -2)
    inactive = torch.cat(
        [
            torch.zeros(B, T * n, dtype=H.dtype, device=H.device),
            (~active).transpose(0, 1).reshape(B, T * p).to(H.dtype),
            (~clamped).transpose(0, 1).reshape(B, T * m).to(H.dtype),
        ],
        dim=1,
    )
    K[:, dyn:, dyn:] = torch.diag_embed(inactive)
    return K


def _solve(K: Tensor, R: Tensor, warn: Tensor) -> Tensor:
    """K^{-1} R (B, N) for K (B, N, N) without graph and R (B, N) with it; an element whose
    K is singular (redundant active rows) gets the least-squares solution, with a warning
    if it is one of ``warn`` (B,) (an unconverged element's is no news)."""
    LU, pivots, info = torch.linalg.lu_factor_ex(K)
    pivot = LU.diagonal(dim1=-2, dim2=-1).abs()
    tiny = pivot.amin(-1) <= K.shape[-1] * torch.finfo(K.dtype).eps * pivot.amax(-1)
    singular = (info != 0) | tiny
    if not bool(singular.any()):
        return torch.linalg.lu_solve(LU, pivots, R.unsqueeze(-1)).squeeze(-1)
    rows = torch.nonzero(singular).flatten()
    news = torch.nonzero(singular & warn).flatten().tolist()
    if news:
        warnings.warn(
            f"the KKT matrix of batch elements {news[:10]} is singular (active constraint "
            "rows that depend on each other, on the bounds or on x_init); their gradient "
            "is the least-squares one",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    # the singular elements solve an identity here (a singular LU would send NaN into the
    # backward of every row), then their least-squares solution replaces it
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    LU, pivots = torch.linalg.lu_factor(torch.where(singular.view(-1, 1, 1), eye, K))
    out = torch.linalg.lu_solve(LU, pivots, R.unsqueeze(-1)).squeeze(-1)
    least = (torch.linalg.pinv(K[rows]) @ R[rows].unsqueeze(-1)).squeeze(-1)
    return out.index_copy(0, rows, least)


def kkt_solution(
    cost: CheckedCost,
    dynamics: CheckedDynamics,
    constraints: CheckedConstraints,
    x_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    x: Tensor,
    u: Tensor,
    mu: Tensor,
    clamped: Tensor,
    options: MPCOptions,
    warn: Tensor,
) -> tuple[Tensor, Tensor]:
    """The constrained solution (x, u), with the gradient of its KKT conditions attached.

    Args:
        cost, dynamics, constraints: the modules (restricted to the elements solved here).
        x_init: (B, n) initial states.
        lower, upper: (T, B, m) control bounds or None.
        x: (T, B, n), u: (T, B, m) the solution (constants).
        mu: (T, B, p) the constraints' multipliers; the rows with mu > 0 are active.
        clamped: (T, B, m) the controls held at a bound.
        options: ``jacobian`` and ``finite_diff_eps`` of the dynamics' Jacobians.
        warn: (B,) the elements whose singular KKT matrix is worth a warning.

    Returns:
        x (T, B, n) and u (T, B, m), equal to the given ones, differentiable with respect
        to x_init, the bounds and the parameters of the three modules.
    """
    T, B, n = x.shape
    x, u, mu = x.detach(), u.detach(), mu.detach()
    active = mu > 0
    mu = torch.where(active, mu, torch.zeros_like(mu))
    H_cost, grad_cost = cost_derivatives(cost, x, u, create_graph=True)
    G = constraint_jacobian(constraints, x, u)
    values, weighted_g, H_g = constraint_curvature(constraints, x, u, mu, create_graph=True)
    H = H_cost.detach() + H_g
    stationarity = grad_cost + weighted_g
    next_state = x[1:]
    F = x.new_zeros(0, B, n, H.shape[-1])
    if T > 1:
        F = dynamics_jacobian(
            dynamics,
            x[:-1],
            u[:-1],
            method=options.jacobian,
            eps=options.finite_diff_eps,
            row_copies=True,
        )
        # costates of the constrained problem, eq. (7) with the Lagrangian's gradient
        lam = costates_from_gradient(grad_cost.detach() + weighted_g.detach(), F)
        next_state, weighted_f, H_f = dynamics_curvature(
            dynamics, x[:-1], u[:-1], lam[1:], create_graph=True, row_copies=True
        )
        H = torch.cat([H[:-1] + H_f, H[-1:]])
        stationarity = stationarity + torch.cat([weighted_f, torch.zeros_like(weighted_f[:1])])
        next_state = next_state - x[1:]
    K = kkt_matrix(H.detach(), F, G, active, clamped, n)
    # the primal rows; those of inactive constraints and free controls are not rows at all
    if lower is None or upper is None:
        bound = upper if lower is None else lower
    else:
        bound = torch.where(u <= lower, lower, upper)
        # a control pinned by its bounds (lower == upper) belongs to the bound the
        # Lagrangian's gradient presses on, halves at a zero gradient, as in implicit_lqr
        push = stationarity.detach()[..., n:]
        pressed = torch.where(push > 0, lower, torch.where(push < 0, upper, 0.5 * (lower + upper)))
        bound = torch.where(lower == upper, pressed, bound)
    if bound is None:
        bound = torch.zeros_like(u)
    at_bound = torch.where(clamped, u - bound, torch.zeros_like(u))
    primal = [
        (x_init - x[0]).unsqueeze(0),
        next_state,
        torch.where(active, values, torch.zeros_like(values)),
        at_bound,
    ]
    R = torch.cat(
        [stationarity.transpose(0, 1).reshape(B, -1)]
        + [part.transpose(0, 1).reshape(B, -1) for part in primal],
        dim=1,
    )
    s = _solve(K, R, warn)[:, : T * H.shape[-1]].view(B, T, -1).transpose(0, 1)
    tau = torch.cat([x, u], dim=-1) - s + s.detach()
    return tau[..., :n], tau[..., n:]
