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

import torch
from torch import Tensor

from mpc_policy.box_qp import masked_solve
from mpc_policy.riccati import Gains

__all__ = ["adjoint_solve", "costates", "costates_from_gradient"]


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
