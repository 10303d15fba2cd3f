"""The box-LQR problem condensed onto its controls, solved as one dense box QP.

Eliminating the states with the dynamics, x_t = S_t U + s_t for the stacked controls
U = [u_1; ...; u_T] (T m), turns the box-LQR problem into

    min_U  1/2 U' H U + g' U   s.t.  u_lower <= U <= u_upper,
    H = sum_t E_t' C_t E_t,   g = sum_t E_t' (C_t e_t + c_t),   tau_t = E_t U + e_t

a convex QP that projected Newton solves exactly. Box-DDP's per-step box QPs can stall on a
badly conditioned problem whose feedback keeps pushing free controls onto their bounds (the
step is a descent direction only for vanishing step sizes); the LQR layer then finishes those
elements here. The cost is O((T m)^3) per element, which is why it is the fallback and not
the main path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import BoxQPResult, box_qp

__all__ = ["condense", "solve_condensed"]


def condense(x_init: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """Hessian and gradient of the LQR objective as a function of the stacked controls.

    Args:
        x_init: (B, n) initial states.
        C: (T, B, d, d) quadratic terms, time first.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        f: (T-1, B, n) dynamics offsets.

    Returns:
        H: (B, T m, T m) and g: (B, T m).
    """
    T, B, d = c.shape
    n = x_init.shape[-1]
    m = d - n
    S = torch.zeros(B, n, T * m, dtype=c.dtype, device=c.device)  # x_t = S U + s
    s = x_init
    H = torch.zeros(B, T * m, T * m, dtype=c.dtype, device=c.device)
    g = torch.zeros(B, T * m, dtype=c.dtype, device=c.device)
    for t in range(T):
        E = torch.cat([S, torch.zeros(B, m, T * m, dtype=c.dtype, device=c.device)], dim=1)
        E[:, n:, t * m : (t + 1) * m] = torch.eye(m, dtype=c.dtype, device=c.device)
        e = torch.cat([s, torch.zeros(B, m, dtype=c.dtype, device=c.device)], dim=-1)
        CE = C[t] @ E
        H = H + E.transpose(-1, -2) @ CE
        g = g + (
            E.transpose(-1, -2) @ ((C[t] @ e.unsqueeze(-1)).squeeze(-1) + c[t]).unsqueeze(-1)
        ).squeeze(-1)
        if t < T - 1:
            S = F[t] @ E
            s = (F[t] @ e.unsqueeze(-1)).squeeze(-1) + f[t]
    return 0.5 * (H + H.transpose(-1, -2)), g


def solve_condensed(
    x_init: Tensor,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    lower: Tensor,
    upper: Tensor,
    u_start: Tensor,
    max_iter: int = 100,
) -> BoxQPResult:
    """Solve the condensed box QP, warm-started at ``u_start``.

    Args:
        x_init: (B, n), C: (T, B, d, d), c: (T, B, d), F: (T-1, B, n, d), f: (T-1, B, n).
        lower: (T, B, m) and upper: (T, B, m) control bounds (may be infinite).
        u_start: (T, B, m) warm start.
        max_iter: projected-Newton iterations.

    Returns:
        The ``BoxQPResult`` over the stacked controls (B, T m); reshape x and free with
        ``.view(B, T, m)``.
    """
    H, g = condense(x_init, C, c, F, f)
    B = x_init.shape[0]

    def stacked(z: Tensor) -> Tensor:
        return z.transpose(0, 1).reshape(B, -1)

    return box_qp(H, g, stacked(lower), stacked(upper), stacked(u_start), max_iter=max_iter)
