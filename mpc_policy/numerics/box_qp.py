"""Batched box-constrained quadratic programs by projected Newton.

Solves, for every batch element on its own,

    min_x  1/2 x' Q x + q' x    s.t.  lower <= x <= upper

with Q positive definite (Bertsekas, 1982; the box QP of Tassa et al., 2014). Each iteration
splits the variables into a clamped set (at a bound, with the gradient pushing outward) and a
free set, takes the Newton step on the free set and projects it onto the box, with an
Armijo line search along the projection arc. Every element chooses its own step and stops on
its own: a converged element is frozen while the others go on, so an element's answer never
depends on the rest of the batch.

The factorization of Q on the final free set is returned so callers (the LQR backward
recursion and the implicit backward pass) reuse it instead of refactorizing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BoxQPResult", "box_qp", "clamped_set", "masked_cholesky", "masked_solve"]

_ARMIJO = 0.1


class BoxQPResult(NamedTuple):
    """Solution of a batch of box QPs.

    Attributes:
        x: (B, m) minimizers.
        free: (B, m) True where a variable is free at the solution (not clamped).
        chol: (B, m, m) lower Cholesky factor of Q restricted to the free set, with the
            clamped rows and columns replaced by the identity.
        converged: (B,) whether each element met the stopping test.
        iterations: (B,) projected-Newton iterations each element used.
    """

    x: Tensor
    free: Tensor
    chol: Tensor
    converged: Tensor
    iterations: Tensor


def masked_cholesky(Q: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factor of Q on the free set, identity elsewhere.

    Args:
        Q: (B, m, m) symmetric matrices.
        free: (B, m) boolean free set.

    Returns:
        L: (B, m, m) lower factor of Q_ff embedded in the identity.
        info: (B,) 0 where the factorization succeeded (as ``torch.linalg.cholesky_ex``).
    """
    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device)
    Q_ff = torch.where(pair, Q, eye)
    L, info = torch.linalg.cholesky_ex(Q_ff)
    return L, info


def masked_solve(L: Tensor, free: Tensor, rhs: Tensor) -> Tensor:
    """Solve Q_ff y_f = rhs_f with y = 0 on the clamped set.

    Args:
        L: (B, m, m) factor from ``masked_cholesky``.
        free: (B, m) free set used for L.
        rhs: (B, m) or (B, m, k) right-hand sides.

    Returns:
        (B, m) or (B, m, k) solutions, zero on clamped rows.
    """
    vector = rhs.dim() == L.dim() - 1
    mask = free.unsqueeze(-1).to(rhs.dtype)
    R = rhs.unsqueeze(-1) if vector else rhs
    Y = torch.cholesky_solve(R * mask, L) * mask
    return Y.squeeze(-1) if vector else Y


def clamped_set(x: Tensor, g: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """The clamped set of the projected-Newton method.

    Args:
        x: (B, m) points in the box.
        g: (B, m) gradients of the objective at x.
        lower: (B, m) lower bounds.
        upper: (B, m) upper bounds.

    Returns:
        (B, m) True where x is at a bound and the gradient pushes outward.
    """
    return torch.where(g > 0, x <= lower, (x >= upper) & (g < 0))


def _newton_step(Q: Tensor, g: Tensor, free: Tensor, eye: Tensor) -> tuple[Tensor, Tensor]:
    """Factor L (B, m, m) of Q (B, m, m) on the free set and the Newton step (B, m) there."""
    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    L, _info = torch.linalg.cholesky_ex(torch.where(pair, Q, eye))
    return L, -masked_solve(L, free, g)


def _small(dx: Tensor, x: Tensor, tol: float) -> Tensor:
    """(B,) True where the step dx (B, m) is within tol relative to x (B, m)."""
    return dx.abs().amax(-1) <= tol * (1.0 + x.abs().amax(-1))


def _armijo(trials: Tensor, x: Tensor, g: Tensor, Q: Tensor) -> Tensor:
    """(B, L) sufficient decrease of trial points (B, L, m) from x (B, m), gradient g (B, m)."""
    step = trials - x.unsqueeze(1)
    predicted = (step * g.unsqueeze(1)).sum(-1)
    decrease = predicted + 0.5 * (step * torch.bmm(step, Q)).sum(-1)
    return decrease <= _ARMIJO * predicted


def box_qp(
    Q: Tensor,
    q: Tensor,
    lower: Tensor,
    upper: Tensor,
    x_init: Tensor | None = None,
    max_iter: int = 30,
    tol: float | None = None,
    line_search_decay: float = 0.5,
    max_line_search: int = 20,
) -> BoxQPResult:
    """Projected-Newton solve of min 1/2 x'Qx + q'x s.t. lower <= x <= upper, per element.

    Args:
        Q: (B, m, m) symmetric positive definite matrices.
        q: (B, m) linear terms.
        lower: (B, m) lower bounds (may be -inf).
        upper: (B, m) upper bounds (may be +inf), upper >= lower.
        x_init: (B, m) warm start, projected onto the box; zeros projected if None.
        max_iter: iteration limit.
        tol: an element stops when its Newton step on the free set is at most
            ``tol * (1 + max |x|)`` (that last step is still taken); None picks the
            square root of the dtype's machine epsilon. An element also stops, exactly,
            when a full Newton step stayed inside the box and the free set it was taken
            on is still the free set at the new point.
        line_search_decay: factor between line-search candidates.
        max_line_search: number of line-search candidates.

    Returns:
        A ``BoxQPResult``.
    """
    B, m = q.shape
    if tol is None:
        tol = torch.finfo(q.dtype).eps ** 0.5
    x = torch.zeros_like(q) if x_init is None else x_init
    x = torch.clamp(x, lower, upper)
    eye = torch.eye(m, dtype=Q.dtype, device=Q.device)
    q_col = q.unsqueeze(-1)

    # iteration 0: nothing is done yet
    g = torch.baddbmm(q_col, Q, x.unsqueeze(-1)).squeeze(-1)
    free = ~clamped_set(x, g, lower, upper)
    iterations = torch.zeros(B, dtype=torch.long, device=q.device)
    if not bool(free.any()):
        # every variable is at a bound with the gradient pushing outward: x is optimal, and
        # what the general path computes is known (a zero Newton step on an empty face)
        done = torch.ones(B, dtype=torch.bool, device=q.device)
        return BoxQPResult(x, free, eye.expand(B, m, m).clone(), done, iterations)
    L, dx = _newton_step(Q, g, free, eye)
    # the last Newton step is within tolerance: take it (it is exact on the face)
    done = _small(dx, x, tol)
    x = torch.where(done.unsqueeze(-1), torch.clamp(x + dx, lower, upper), x)
    free_out, chol_out = free, L
    alphas: Tensor | None = None
    for it in range(1, max_iter + 1):
        if bool(done.all()):
            break
        active = ~done
        iterations = iterations + active

        # Each element takes its first Armijo point along the projection arc: the full
        # Newton step first (the usual case), else all the candidates at once.
        x_newton = x + dx
        trial = torch.clamp(x_newton, lower, upper)
        full_ok = _armijo(trial.unsqueeze(1), x, g, Q).squeeze(1) | (max_line_search == 1)
        if bool((full_ok | done).all()):
            exact_step = (trial == x_newton).all(-1)
            x = torch.where(active.unsqueeze(-1), trial, x)
        else:
            if alphas is None:
                alphas = line_search_decay ** torch.arange(
                    max_line_search, dtype=q.dtype, device=q.device
                )
            trials = torch.addcmul(x.unsqueeze(1), alphas.view(1, -1, 1), dx.unsqueeze(1))
            trials = torch.clamp(trials, lower.unsqueeze(1), upper.unsqueeze(1))
            ok = _armijo(trials, x, g, Q)
            ok[:, -1] = True  # the smallest step is always taken: progress is never refused
            first = torch.argmax(ok.byte(), dim=1, keepdim=True)
            exact_step = (first.squeeze(1) == 0) & (trials[:, 0] == x_newton).all(-1)
            chosen = torch.take_along_dim(trials, first.unsqueeze(-1), dim=1).squeeze(1)
            x = torch.where(active.unsqueeze(-1), chosen, x)

        g = torch.baddbmm(q_col, Q, x.unsqueeze(-1)).squeeze(-1)
        free_prev, free = free, ~clamped_set(x, g, lower, upper)
        # a full Newton step inside the box on an unchanged free set is the minimizer
        exact = exact_step & (free == free_prev).all(-1) & active
        free_out = torch.where(exact.unsqueeze(-1), free_prev, free_out)
        chol_out = torch.where(exact.view(B, 1, 1), L, chol_out)
        done = done | exact
        if it == max_iter or bool(done.all()):
            break

        L, dx = _newton_step(Q, g, free, eye)
        small = _small(dx, x, tol) & ~done
        x = torch.where(small.unsqueeze(-1), torch.clamp(x + dx, lower, upper), x)
        free_out = torch.where(small.unsqueeze(-1), free, free_out)
        chol_out = torch.where(small.view(B, 1, 1), L, chol_out)
        done = done | small

    if not bool(done.all()):
        # elements that ran out of iterations keep the factorization at their last iterate
        g = torch.baddbmm(q_col, Q, x.unsqueeze(-1)).squeeze(-1)
        free = ~clamped_set(x, g, lower, upper)
        L, _ = masked_cholesky(Q, free)
        free_out = torch.where(done.unsqueeze(-1), free_out, free)
        chol_out = torch.where(done.view(B, 1, 1), chol_out, L)
    return BoxQPResult(x, free_out, chol_out, done, iterations)
