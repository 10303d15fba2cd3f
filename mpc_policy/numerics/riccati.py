"""Riccati recursions of box-constrained LQR, as pure functions on time-major tensors.

For the quadratic model of a trajectory around a nominal tau_bar (Appendix A, MPCstep):

    min_{dtau}  sum_t 1/2 dtau_t' C_t dtau_t + g_t' dtau_t
    s.t.        dx_1 = 0,  dx_{t+1} = F_t dtau_t,  lower_t <= du_t <= upper_t

the backward recursion computes, from t = T down to 1,

    Q_t = C_t + F_t' V_{t+1} F_t          q_t = g_t + F_t' v_{t+1}
    k_t = argmin 1/2 du' Q_uu du + q_u' du  s.t. the box    (a box QP)
    K_t = -Q_uu,ff^{-1} Q_ux  on the free rows, 0 on the clamped rows
    V_t = Q_xx + Q_xu K_t + K_t' Q_ux + K_t' Q_uu K_t  =  Q_xx + Q_xu K_t
    v_t = q_x + Q_xu k_t + K_t' q_u + K_t' Q_uu k_t    =  q_x + Q_xu k_t

and the rollout applies u_t = u_bar_t + alpha k_t + K_t (x_t - x_bar_t), clamped to the box.
The same factorization (K, Q, and the Cholesky factor of Q_uu on the free set) serves the
implicit backward pass, which is one more recursion with g replaced by dL/dtau and the clamped
controls fixed to zero (section 3, Module 1, eq. (9); see ``mpc_policy.numerics.adjoint``).

Shapes, time first inside the solver: C (T, B, d, d), g (T, B, d), F (T-1, B, n, d) with
d = n + m; bounds (T, B, m) or None.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import box_qp, clamped_set, masked_cholesky, masked_solve

_MAX_SHIFTS = 40

__all__ = ["Gains", "backward_recursion", "factorize"]


class Gains(NamedTuple):
    """Factorization of one backward recursion.

    Attributes:
        K: (T, B, m, n) feedback gains (zero rows on clamped controls).
        k: (T, B, m) feedforward steps.
        free: (T, B, m) free controls of each step's box QP.
        chol: (T, B, m, m) Cholesky factors of Q_uu on the free set.
        Q: (T, B, d, d) the Q matrices of the recursion.
        shift: (T, B) the diagonal shift each step's Q_uu (on the free set, for
            ``factorize``) needed to be positive definite; 0 where none. The kernels
            report it and do not warn: the solver's layers decide what is worth a warning
            (``mpc_policy._warnings.warn_regularized``).
    """

    K: Tensor
    k: Tensor
    free: Tensor
    chol: Tensor
    Q: Tensor
    shift: Tensor


def _regularize(Q_uu: Tensor, regularization: float) -> tuple[Tensor, Tensor, Tensor]:
    """Make Q_uu (B, m, m) positive definite by a diagonal shift growing 10x per try.

    Args:
        Q_uu: (B, m, m) symmetric blocks.
        regularization: first shift, relative to 1 + max |diag Q_uu|.

    Returns:
        The shifted Q_uu (B, m, m), its Cholesky factor (B, m, m) and the shift (B,) that
        each element needed (0 where none). An element that no shift helps (non-finite
        data) gets the identity, and a shift of 0.
    """
    L, info = torch.linalg.cholesky_ex(Q_uu)
    if not bool(info.any()):
        return Q_uu, L, torch.zeros(Q_uu.shape[0], dtype=Q_uu.dtype, device=Q_uu.device)
    bad = info > 0
    eye = torch.eye(Q_uu.shape[-1], dtype=Q_uu.dtype, device=Q_uu.device)
    mu = regularization * (1.0 + Q_uu.diagonal(dim1=-2, dim2=-1).abs().amax(-1))
    shift = torch.zeros_like(mu)
    for _ in range(_MAX_SHIFTS):
        shift = torch.where(bad, torch.where(shift == 0, mu, 10.0 * shift), shift)
        L, info = torch.linalg.cholesky_ex(Q_uu + shift.view(-1, 1, 1) * eye)
        bad = info > 0
        if not bool(bad.any()):
            break
    else:  # non-finite data: no shift helps; the element's step is then the identity's
        Q_uu = torch.where(bad.view(-1, 1, 1), eye, Q_uu)
        shift = torch.where(bad, torch.zeros_like(shift), shift)
        L, _ = torch.linalg.cholesky_ex(Q_uu + shift.view(-1, 1, 1) * eye)
    return Q_uu + shift.view(-1, 1, 1) * eye, L, shift


def backward_recursion(
    C: Tensor,
    g: Tensor,
    F: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    *,
    regularization: float = 1e-8,
    qp_max_iter: int = 30,
) -> Gains:
    """Backward pass of box-DDP on the quadratic model (Appendix A, MPCstep).

    Each step carries the gradient as one more column of the quadratic terms,
    P_t = [Q_t, q_t] and W_t = [V_t, v_t], so that one product updates both and one solve
    gives K and k: at small sizes the cost is the number of tensor operations.

    Args:
        C: (T, B, d, d) quadratic terms (symmetric).
        g: (T, B, d) gradient of the objective at the nominal trajectory.
        F: (T-1, B, n, d) dynamics Jacobians.
        lower: (T, B, m) lower bounds on the control step du, or None (unbounded).
        upper: (T, B, m) upper bounds on the control step du, or None.
        regularization: first diagonal shift for a Q_uu that is not positive definite.
        qp_max_iter: projected-Newton iterations per box QP.

    Returns:
        The ``Gains`` of the recursion, the regularization shifts included.
    """
    T, B, d = g.shape
    n = F.shape[-2]
    bounded = lower is not None and upper is not None
    Cg = torch.cat([C, g.unsqueeze(-1)], dim=-1)  # (T, B, d, d+1): [C_t, g_t]
    # [F_t, 0; 0, 1] (T-1, B, n+1, d+1): W_{t+1} [F_t, 0; 0, 1] = [V F_t, v]
    F_hat = torch.zeros(T - 1, B, n + 1, d + 1, dtype=F.dtype, device=F.device)
    F_hat[..., :n, :d] = F
    F_hat[..., n, d] = 1.0
    Cg_steps, F_T_steps, F_hat_steps = Cg.unbind(0), F.transpose(-1, -2).unbind(0), F_hat.unbind(0)
    lower_steps = lower.unbind(0) if lower is not None else ()
    upper_steps = upper.unbind(0) if upper is not None else ()
    # the columns of x and of the gradient: P[:, :, xg] = [Q_x, q] and G = [K, k]
    xg = torch.cat([torch.arange(n, device=F.device), torch.tensor([d], device=F.device)])
    all_free = torch.ones(B, d - n, dtype=torch.bool, device=g.device)
    Gs, frees, chols, Ps, shifts = [], [], [], [], []
    W = None
    for t in range(T - 1, -1, -1):
        # [Q, q] = [C, g] + F' [V F, v]
        P = Cg_steps[t]
        if W is not None:
            P = torch.baddbmm(P, F_T_steps[t], torch.bmm(W, F_hat_steps[t]))
        S = P.index_select(-1, xg)  # [Q_xx, q_x; Q_ux, q_u]
        Q_uu = P[:, n:, n:d]
        Q_uu_reg, L, shift = _regularize(Q_uu, regularization)
        shifts.append(shift)
        # K and k from one solve: -Q_uu^{-1} [Q_ux, q_u]
        G = -torch.cholesky_solve(S[:, n:], L)
        free = all_free
        if bounded:
            k = G[..., n]
            lower_t, upper_t = lower_steps[t], upper_steps[t]
            k_box = torch.clamp(k, lower_t, upper_t)
            leaving = (k_box != k).any(-1)
            if bool(leaving.any()):
                # the unconstrained step leaves the box: solve the box QP from its
                # projection (a good guess of the active set) for those elements only
                G, free, L = _box_step(
                    Q_uu_reg, S, G, L, k_box, lower_t, upper_t, leaving, n, qp_max_iter
                )
        # K_f = -Q_ff^{-1} Q_fx on the free rows (0 elsewhere) gives K'Q_uu K = -K'Q_ux, and
        # the box QP's optimality (Q_uu k + q_u)_f = 0 gives K'(q_u + Q_uu k) = 0, so
        # [V, v] = [Q_xx, q_x] + Q_xu [K, k]
        W = torch.baddbmm(S[:, :n], P[:, :n, n:d], G)
        V = W[..., :n]
        W = torch.cat([0.5 * (V + V.transpose(-1, -2)), W[..., n:]], dim=-1)
        if Q_uu_reg is not Q_uu:
            Q_u = torch.cat([P[:, :n, n:d], Q_uu_reg], dim=-2)
            P = torch.cat([P[:, :, :n], Q_u, P[:, :, d:]], dim=-1)
        Gs.append(G)
        frees.append(free)
        chols.append(L)
        Ps.append(P)
    gains = torch.stack(Gs[::-1])
    return Gains(
        gains[..., :n],
        gains[..., n],
        torch.stack(frees[::-1]),
        torch.stack(chols[::-1]),
        torch.stack(Ps[::-1])[..., :d],
        torch.stack(shifts[::-1]),
    )


def _box_step(
    Q_uu: Tensor,
    S: Tensor,
    G: Tensor,
    L: Tensor,
    k_box: Tensor,
    lower: Tensor,
    upper: Tensor,
    leaving: Tensor,
    n: int,
    qp_max_iter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace the unconstrained step of the elements that leave the box by the box QP's.

    Args:
        Q_uu: (B, m, m) positive definite blocks.
        S: (B, d, n+1) the columns [Q_x, q] of the step's quadratic model.
        G: (B, m, n+1) unconstrained [K, k].
        L: (B, m, m) Cholesky factors of Q_uu.
        k_box: (B, m) the unconstrained k projected onto the box (the QP's warm start).
        lower: (B, m) lower bounds on du.
        upper: (B, m) upper bounds on du.
        leaving: (B,) the elements whose unconstrained k leaves the box.
        n: state size.
        qp_max_iter: projected-Newton iterations.

    Returns:
        [K, k] (B, m, n+1), free set (B, m) and factors (B, m, m), the QP's on ``leaving``.
    """
    B, m = k_box.shape
    q_u = S[:, n:, n]
    # The box QP's first test: where every control is at a bound of the projection with
    # the gradient pushing outward, the projection is the minimizer, no control is free
    # and the factor is the identity. When that holds for every leaving element, no QP.
    g = torch.baddbmm(q_u.unsqueeze(-1), Q_uu, k_box.unsqueeze(-1)).squeeze(-1)
    on_face = clamped_set(k_box, g, lower, upper).all(-1)
    if bool((on_face | ~leaving).all()):
        G_box = torch.cat([torch.zeros_like(G[..., :n]), k_box.unsqueeze(-1)], dim=-1)
        eye = torch.eye(m, dtype=L.dtype, device=L.device)
        pick = leaving.view(B, 1, 1)
        free = (~leaving).unsqueeze(-1).expand(B, m)
        return torch.where(pick, G_box, G), free, torch.where(pick, eye, L)
    rows = torch.nonzero(leaving).squeeze(-1)
    if rows.numel() < B:
        Q_uu, S, lower, upper = (z.index_select(0, rows) for z in (Q_uu, S, lower, upper))
        k_box = k_box.index_select(0, rows)
    qp = box_qp(Q_uu, S[:, n:, n], lower, upper, k_box, max_iter=qp_max_iter)
    if bool(qp.free.any()):
        K = -masked_solve(qp.chol, qp.free, S[:, n:, :n])
    else:  # every control clamped: no feedback
        K = torch.zeros_like(S[:, n:, :n])
    G_box = torch.cat([K, qp.x.unsqueeze(-1)], dim=-1)
    if rows.numel() < B:
        free = torch.ones(B, m, dtype=torch.bool, device=K.device)
        return (
            G.index_copy(0, rows, G_box),
            free.index_copy(0, rows, qp.free),
            L.index_copy(0, rows, qp.chol),
        )
    return G_box, qp.free, qp.chol


def factorize(
    C: Tensor,
    F: Tensor,
    free: Tensor,
    *,
    regularization: float = 1e-8,
) -> Gains:
    """Backward recursion with a fixed free set (no box QP): the factorization of eq. (9).

    Used when the data of the backward LQR differ from the forward pass's last model (the
    exact gradients of a nonlinear problem use the Hessian of the Lagrangian). Only Q_uu on
    the free set has to be positive definite.

    Args:
        C: (T, B, d, d) quadratic terms.
        F: (T-1, B, n, d) dynamics Jacobians.
        free: (T, B, m) free controls at the solution.
        regularization: first diagonal shift for a Q_uu,ff that is not positive definite.

    Returns:
        ``Gains`` with k = 0, the regularization shifts included.
    """
    T = C.shape[0]
    n = F.shape[-2]
    Ks, chols, Qs, shifts = [], [], [], []
    V = None
    for t in range(T - 1, -1, -1):
        Q = C[t]
        if V is not None:
            Q = Q + F[t].transpose(-1, -2) @ V @ F[t]
        L, info = masked_cholesky(Q[:, n:, n:], free[t])
        shift = torch.zeros(Q.shape[0], dtype=Q.dtype, device=Q.device)
        if bool((info > 0).any()):
            # only Q_uu on the free set must be positive definite: shift that block of the
            # elements whose factorization failed (identity on the clamped set, so the
            # others need no shift)
            pair = free[t].unsqueeze(-1) & free[t].unsqueeze(-2)
            eye = torch.eye(pair.shape[-1], dtype=Q.dtype, device=Q.device)
            Q_uu, _, shift = _regularize(torch.where(pair, Q[:, n:, n:], eye), regularization)
            Q_uu = torch.where(pair, Q_uu, Q[:, n:, n:])
            Q = torch.cat([Q[:, :, :n], torch.cat([Q[:, :n, n:], Q_uu], dim=-2)], dim=-1)
            L, _ = masked_cholesky(Q_uu, free[t])
        K = -masked_solve(L, free[t], Q[:, n:, :n])
        V = Q[:, :n, :n] + Q[:, :n, n:] @ K
        V = 0.5 * (V + V.transpose(-1, -2))
        Ks.append(K)
        chols.append(L)
        Qs.append(Q)
        shifts.append(shift)
    K = torch.stack(Ks[::-1])
    chol = torch.stack(chols[::-1])
    Q_all = torch.stack(Qs[::-1])
    return Gains(K, torch.zeros_like(K[..., 0]), free, chol, Q_all, torch.stack(shifts[::-1]))
