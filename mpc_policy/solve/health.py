"""Per-element health of a box-DDP solve: non-finite rows and the curvature at a fixed point.

Two things a fixed-point test alone cannot see, each decided per batch element:

- non-finite data: an element whose trajectory, cost, cost derivatives or dynamics
  Jacobians hold a NaN or an Inf. Its local model is replaced by a harmless one
  (C = I, g = 0, F = 0) so that no kernel spends iterations on it, and it is frozen;
- no minimizer: at a fixed point of the convex approximation, the Riccati recursion's
  control Hessian Q_uu,t = C_uu,t + F_u,t' V_{t+1} F_u,t must be positive definite on the
  free controls (second-order condition). If it is not, even after the first regularization
  shift ``regularization * (1 + max |diag Q_uu|)``, the point is a saddle or the cost is
  unbounded below, however small the step.

``ddp_info`` turns these masks into the per-element ``SolverInfo`` status.

Shapes are time-major as in the solver: C (T, B, d, d), g (T, B, d), F (T-1, B, n, d).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import masked_cholesky
from mpc_policy.numerics.riccati import Gains
from mpc_policy.solution import SOURCE_COST, SOURCE_DYNAMICS, SolverInfo, Status

__all__ = [
    "SOURCE_COST",
    "SOURCE_DYNAMICS",
    "ddp_info",
    "finite_rows",
    "indefinite_rows",
    "neutral_model",
    "nonfinite_source",
]


def _row_sums(tensors: Sequence[Tensor]) -> Tensor:
    """(B,) sum of every entry of each element (non-finite iff an entry is, or overflow)."""
    total: Tensor | None = None
    for z in tensors:
        sums = z if z.dim() == 1 else z.sum(dim=[i for i in range(z.dim()) if i != 1])
        total = sums if total is None else total + sums
    assert total is not None
    return total


def finite_rows(*tensors: Tensor) -> Tensor:
    """(B,) whether every entry of each element is finite.

    A NaN or an Inf makes the element's sum non-finite, so one reduction per tensor (no
    copy) decides; the rare non-finite sums are confirmed entry by entry (a sum of finite
    entries can overflow).

    Args:
        tensors: time-major tensors (T, B, ...) or per-element ones (B,), same B.
    """
    finite = torch.isfinite(_row_sums(tensors))
    if bool(finite.all()):
        return finite
    exact = torch.ones_like(finite)
    for z in tensors:
        ok = torch.isfinite(z if z.dim() == 1 else z.movedim(1, 0).flatten(1))
        exact = exact & (ok if z.dim() == 1 else ok.all(-1))
    return exact


def nonfinite_source(dynamics: Sequence[Tensor], cost: Sequence[Tensor]) -> tuple[Tensor, bool]:
    """Which part of the problem of each element holds a NaN or an Inf, with one sync.

    Args:
        dynamics: what the dynamics gave (next states, Jacobians), time-major.
        cost: what the cost gave (values, derivatives), time-major or (B,).

    Returns:
        (B,) int8 codes (0 finite, ``SOURCE_DYNAMICS``, or ``SOURCE_COST``; the dynamics
        first, as a non-finite state makes the cost non-finite too), and whether any is not 0.
    """
    sums_dynamics = _row_sums(dynamics)
    sums_cost = _row_sums(cost) if cost else torch.zeros_like(sums_dynamics)
    sums = torch.stack([sums_dynamics, sums_cost])
    if bool(torch.isfinite(sums).all()):
        return torch.zeros(sums.shape[1], dtype=torch.int8, device=sums.device), False
    bad_dynamics = ~finite_rows(*dynamics)
    bad_cost = ~finite_rows(*cost) if cost else torch.zeros_like(bad_dynamics)
    code = torch.zeros(sums.shape[1], dtype=torch.int8, device=sums.device)
    code = torch.where(bad_cost, torch.full_like(code, SOURCE_COST), code)
    code = torch.where(bad_dynamics, torch.full_like(code, SOURCE_DYNAMICS), code)
    return code, bool((code > 0).any())


def neutral_model(C: Tensor, g: Tensor, F: Tensor, bad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The local model with the elements ``bad`` (B,) replaced by C = I, g = 0, F = 0.

    Args:
        C: (T, B, d, d) cost Hessians.
        g: (T, B, d) cost gradients.
        F: (T-1, B, n, d) dynamics Jacobians.
        bad: (B,) the non-finite elements.
    """
    eye = torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)
    C = torch.where(bad.view(1, -1, 1, 1), eye, C)
    g = torch.where(bad.view(1, -1, 1), torch.zeros_like(g), g)
    F = torch.where(bad.view(1, -1, 1, 1), torch.zeros_like(F), F)
    return C, g, F


def _shifted(Q_uu: Tensor, regularization: float) -> Tensor:
    """Q_uu (B, m, m) plus the first regularization shift of ``riccati._regularize``."""
    eye = torch.eye(Q_uu.shape[-1], dtype=Q_uu.dtype, device=Q_uu.device)
    mu = regularization * (1.0 + Q_uu.diagonal(dim1=-2, dim2=-1).abs().amax(-1))
    return Q_uu + mu.view(-1, 1, 1) * eye


def indefinite_rows(
    C: Tensor, F: Tensor, gains: Gains, candidates: Tensor, regularization: float
) -> Tensor:
    """(B,) the elements among ``candidates`` whose fixed point is no minimum.

    If every C_t is positive semidefinite (up to the first shift), so are the V_t and the
    Q_uu,t, and nothing needs checking: one batched factorization decides most solves.
    Otherwise the recursion is run again without regularization on the free set of
    ``gains``, with its feedback K, for the candidates that need it.

    Args:
        C: (T, B, d, d) cost Hessians at the fixed point.
        F: (T-1, B, n, d) dynamics Jacobians there.
        gains: the last backward pass at the fixed point (free set and K).
        candidates: (B,) the elements to check (those that passed the fixed-point test).
        regularization: the solver option of that name.
    """
    B = C.shape[1]
    n = F.shape[-2]
    result = torch.zeros(B, dtype=torch.bool, device=C.device)
    if not bool(candidates.any()):
        return result
    d = C.shape[-1]
    eye = torch.eye(d, dtype=C.dtype, device=C.device)
    mu = regularization * (1.0 + C.diagonal(dim1=-2, dim2=-1).abs().amax(-1))
    _, info = torch.linalg.cholesky_ex(C + mu.unsqueeze(-1).unsqueeze(-1) * eye)
    suspect = candidates & (info > 0).any(0)
    if not bool(suspect.any()):
        return result
    rows = torch.nonzero(suspect).flatten()
    C, F = C[:, rows], F[:, rows]
    K, free = gains.K[:, rows], gains.free[:, rows]
    bad = torch.zeros(rows.numel(), dtype=torch.bool, device=C.device)
    V: Tensor | None = None
    for t in range(C.shape[0] - 1, -1, -1):
        Q = C[t] if V is None else C[t] + F[t].transpose(-1, -2) @ V @ F[t]
        _, info_t = masked_cholesky(_shifted(Q[:, n:, n:], regularization), free[t])
        bad = bad | (info_t > 0)
        V = Q[:, :n, :n] + Q[:, :n, n:] @ K[t]
        V = 0.5 * (V + V.transpose(-1, -2))
    result[rows] = bad
    return result


def ddp_info(
    iterations: Tensor,
    converged: Tensor,
    stalled: Tensor,
    source: Tensor,
    indefinite: Tensor,
    residual: Tensor,
    step_size: Tensor,
    backend: str,
) -> SolverInfo:
    """The report of a solve from its (B,) masks and non-finite ``source`` codes (the
    status: non-finite first, then no minimizer, converged, stalled, out of iterations)."""
    nonfinite = source > 0
    status = torch.full_like(iterations, int(Status.MAX_ITER), dtype=torch.int8)
    for mask, code in (
        (stalled, Status.STALLED),
        (converged, Status.CONVERGED),
        (indefinite, Status.INDEFINITE),
        (nonfinite, Status.NONFINITE),
    ):
        status = torch.where(mask, torch.full_like(status, int(code)), status)
    residual = torch.where(nonfinite, torch.full_like(residual, float("nan")), residual)
    return SolverInfo(
        iterations,
        status == int(Status.CONVERGED),
        residual,
        step_size,
        backend=backend,
        status=status,
        nonfinite_source=source,
    )
