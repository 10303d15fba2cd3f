"""The implicit backward pass of box LQR: eqs. (7) and (9) of the paper, as pure functions.

Given the factorization of the forward pass (``riccati.Gains``, whose free set fixes the
clamped controls), the backward LQR of eq. (9) solves

    min_{dtau}  sum_t 1/2 dtau_t' C_t dtau_t + (dL/dtau_t)' dtau_t
    s.t.        dx_1 = 0,  dx_{t+1} = F_t dtau_t,  du_t = 0 on the clamped controls

by one more Riccati sweep with the forward K_t and Cholesky factors, and eq. (7) turns a
trajectory and the objective's gradient along it into costates. Shapes are time first:
C (T, B, d, d), F (T-1, B, n, d), tau (T, B, d).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import masked_solve
from mpc_policy.numerics.riccati import Gains

__all__ = [
    "ImplicitGradients",
    "adjoint_solve",
    "costates",
    "costates_from_gradient",
    "implicit_gradients",
]


class ImplicitGradients(NamedTuple):
    """What eqs. (7)-(9) give for an LQR solution and a loss gradient (time-major).

    Attributes:
        dtau: (T, B, d) the backward LQR's solution d*_tau; dL/dc = dtau.
        dlam: (T, B, n) its costates; dL/dx_init = dlam[0], dL/df = dlam[1:].
        dC: (T, B, d, d) dL/dC, or None when not asked for.
        dF: (T-1, B, n, d) dL/dF, or None when not asked for.
        residual_u: (T, B, m) the control rows of the backward problem's stationarity
            residual (the multipliers of the active bounds), or None when not asked for.
    """

    dtau: Tensor
    dlam: Tensor
    dC: Tensor | None
    dF: Tensor | None
    residual_u: Tensor | None


def adjoint_solve(gains: Gains, F: Tensor, grad_tau: Tensor) -> Tensor:
    """The backward LQR of eq. (9): c = dL/dtau, f = 0, x_init = 0, clamped controls at 0.

    Args:
        gains: factorization at the solution (its free set fixes the clamped controls).
        F: (T-1, B, n, d) dynamics Jacobians.
        grad_tau: (T, B, d) gradient of the loss with respect to tau.

    Returns:
        dtau: (T, B, d) the solution d*_tau.
    """
    T, B, _ = grad_tau.shape
    n = F.shape[-2]
    ks = []
    v = None
    for t in range(T - 1, -1, -1):
        q = grad_tau[t]
        if v is not None:
            q = q + (F[t].transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1)
        K = gains.K[t]
        k = -masked_solve(gains.chol[t], gains.free[t], q[:, n:])
        # clamped rows of K and k vanish, so Q_xu k + K'Q_uu k = 0 and v = q_x + K'q_u
        v = q[:, :n] + (K.transpose(-1, -2) @ q[:, n:].unsqueeze(-1)).squeeze(-1)
        ks.append(k)
    ks = ks[::-1]
    dx = torch.zeros(B, n, dtype=grad_tau.dtype, device=grad_tau.device)
    out = []
    for t in range(T):
        du = (gains.K[t] @ dx.unsqueeze(-1)).squeeze(-1) + ks[t]
        dtau = torch.cat([dx, du], dim=-1)
        out.append(dtau)
        if t < T - 1:
            dx = (F[t] @ dtau.unsqueeze(-1)).squeeze(-1)
    return torch.stack(out)


def costates_from_gradient(grad: Tensor, F: Tensor) -> Tensor:
    """Costates by eq. (7) from the objective's gradient along the trajectory.

    lambda_T = grad_T,x and lambda_t = grad_t,x + F_t,x' lambda_{t+1}.

    Args:
        grad: (T, B, d) gradient of the objective with respect to tau_t.
        F: (T-1, B, n, d) dynamics Jacobians.

    Returns:
        lam: (T, B, n) costates; lam[0] belongs to the initial condition x_1 = x_init and
        lam[t] (t >= 1) to the dynamics constraint that defines x_{t+1} (0-based x[t]).
    """
    n = F.shape[-2]
    T = grad.shape[0]
    lams = [grad[T - 1, :, :n]]
    for t in range(T - 2, -1, -1):
        Fx = F[t][:, :, :n]
        lams.append(grad[t, :, :n] + (Fx.transpose(-1, -2) @ lams[-1].unsqueeze(-1)).squeeze(-1))
    return torch.stack(lams[::-1])


def costates(C: Tensor, c: Tensor, F: Tensor, tau: Tensor) -> Tensor:
    """Costates of an LQR problem at a trajectory, eq. (7).

    Args:
        C: (T, B, d, d) quadratic terms.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        tau: (T, B, d) trajectory.

    Returns:
        lam: (T, B, n), as ``costates_from_gradient``.
    """
    return costates_from_gradient((C @ tau.unsqueeze(-1)).squeeze(-1) + c, F)


def implicit_gradients(
    gains: Gains,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    tau: Tensor,
    grad_tau: Tensor,
    need_C: bool,
    need_F: bool,
    need_bounds: bool,
) -> ImplicitGradients:
    """The implicit backward pass of box LQR: eq. (9), the costates of eq. (7), eq. (8).

    Args:
        gains: factorization at the solution (its free set fixes the clamped controls).
        C: (T, B, d, d) quadratic terms.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        tau: (T, B, d) the solution.
        grad_tau: (T, B, d) gradient of the loss with respect to tau.
        need_C, need_F, need_bounds: which of dC, dF and residual_u to form.

    Returns:
        ``ImplicitGradients``.
    """
    n = F.shape[-2]
    dtau = adjoint_solve(gains, F, grad_tau)  # eq. (9)
    stationarity = (C @ dtau.unsqueeze(-1)).squeeze(-1) + grad_tau
    dlam = costates_from_gradient(stationarity, F)
    dC = dF = residual_u = None
    # eq. (8); the outer products only where an input asks for them
    if need_C:
        dC = 0.5 * (dtau.unsqueeze(-1) * tau.unsqueeze(-2) + tau.unsqueeze(-1) * dtau.unsqueeze(-2))
    if need_F:
        lam = costates(C, c, F, tau)  # eq. (7)
        dF = dlam[1:].unsqueeze(-1) * tau[:-1].unsqueeze(-2)
        dF = dF + lam[1:].unsqueeze(-1) * dtau[:-1].unsqueeze(-2)
    if need_bounds:
        residual_u = stationarity[..., n:].clone()
        if F.shape[0] > 0:
            F_u = F[..., n:]
            residual_u[:-1] += (F_u.transpose(-1, -2) @ dlam[1:].unsqueeze(-1)).squeeze(-1)
    return ImplicitGradients(dtau, dlam, dC, dF, residual_u)
