"""mpc.pytorch 0.0.6's ``mpc.pnqp``: batched box QPs, solved by ``mpc_policy.numerics.box_qp``.

For every batch element,

    min_x  1/2 x' H x + q' x   s.t.  lower <= x <= upper,   H [B, k, k] positive definite

by projected Newton (Bertsekas, 1982). The return value keeps mpc.pytorch's layout: the
solution, the factorization of H on the free set (H itself when k = 1), the free mask and
an iteration index. Each element stops on its own; one that does not converge is named in
a ``RuntimeWarning`` (mpc.pytorch prints one line for the whole batch).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mpc_policy import box_qp
from mpc_policy.compat.problem import received

__all__ = ["pnqp"]

# mpc.pytorch adds this to the masked Hessian so the clamped rows stay invertible
_SHIFT = 1e-11


def _bound(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    """A float or a [B, k] (or broadcastable) bound as a [B, k] tensor."""
    if isinstance(value, (int, float)):
        return torch.full_like(like, float(value))
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a float or a tensor, received {type(value).__name__}")
    try:
        return value.to(like.dtype).expand_as(like)
    except RuntimeError as error:
        raise ValueError(
            f"{name}: expected shape {tuple(like.shape)} (q's) or broadcastable to it, "
            f"received {tuple(value.shape)}"
        ) from error


def pnqp(
    H: Tensor,
    q: Tensor,
    lower: float | Tensor,
    upper: float | Tensor,
    x_init: Tensor | None = None,
    n_iter: int = 20,
) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor], Tensor, int]:
    """Solve a batch of box-constrained QPs.

    Args:
        H: [B, k, k] symmetric positive definite matrices.
        q: [B, k] linear terms.
        lower: [B, k] lower bounds, or a float.
        upper: [B, k] upper bounds, or a float.
        x_init: [B, k] warm start (projected onto the box), or None.
        n_iter: iteration limit per element.

    Returns:
        x [B, k] the minimizers; the factorization of H_ = H on the free set (zero
        elsewhere, plus 1e-11 I): H_ itself [B, 1, 1] when k = 1, else its LU factors
        (LU [B, k, k], pivots [B, k]) as ``torch.linalg.lu_factor`` gives them (mpc.pytorch's
        ``H.lu()``); If [B, k], 1.0 where a variable is free; and the index of the last
        iteration (iterations - 1, the largest over the batch).
    """
    if not isinstance(H, Tensor) or H.dim() != 3 or H.shape[-1] != H.shape[-2]:
        raise ValueError(f"H: expected shape (B, k, k), received {received(H)}")
    if not isinstance(q, Tensor) or tuple(q.shape) != tuple(H.shape[:2]):
        raise ValueError(f"q: expected shape (B, k) = {tuple(H.shape[:2])}, received {received(q)}")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter: expected an integer >= 1, received {n_iter!r}")
    low, high = _bound("lower", lower, q), _bound("upper", upper, q)
    start = None if x_init is None else x_init.detach().to(q.dtype)
    result = box_qp(H, q, low, high, x_init=start, max_iter=n_iter)
    if not bool(result.converged.all()):
        bad = torch.nonzero(~result.converged).flatten().tolist()
        warnings.warn(
            f"pnqp: elements {bad} did not converge in n_iter={n_iter} iterations",
            RuntimeWarning,
            stacklevel=2,
        )
    k = H.shape[-1]
    free = result.free
    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    eye = torch.eye(k, dtype=H.dtype, device=H.device)
    H_free = torch.where(pair, H, torch.zeros_like(H)) + _SHIFT * eye
    factor: Tensor | tuple[Tensor, Tensor]
    factor = H_free if k == 1 else torch.linalg.lu_factor(H_free)
    last = max(int(result.iterations.max()) - 1, 0)
    return result.x, factor, free.to(q.dtype), last
