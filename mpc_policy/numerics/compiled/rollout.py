"""Rollout of affine dynamics under the DDP control law, compiled.

For line-search step sizes alpha_l and every batch element,

    x_1 = x_init,  u_t = clamp(u_bar_t + alpha_l k_t + K_t (x_t - x_bar_t), lower_t, upper_t),
    x_{t+1} = F_t [x_t; u_t] + f_t,

the rollout that ``mpc_policy.solve.rollout.rollout`` runs step by step with tensor operations
for an LQR problem, as one compiled loop. CPU tensors only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import clamp

__all__ = ["affine_rollout", "rollout_element"]


@kernel(nogil=True, no_cpython_wrapper=True)
def rollout_element(
    b, F, f, x_init, u_bar, x_bar, K, k, alpha, feedback, bounded, lower, upper, x, u
) -> None:
    """Element b's rollout into x (T, n), u (T, m): u_t = u_bar_t (+ alpha k_t +
    K_t (x_t - x_bar_t) with ``feedback``), clamped to [lower_t, upper_t] if ``bounded``."""
    T, m = u.shape
    n = x.shape[1]
    for i in range(n):
        x[0, i] = x_init[b, i]
    for t in range(T):
        for i in range(m):
            value = u_bar[t, b, i]
            if feedback:
                value += alpha * k[t, b, i]
                for j in range(n):
                    value += K[t, b, i, j] * (x[t, j] - x_bar[t, b, j])
            if bounded:
                value = clamp(value, lower[t, b, i], upper[t, b, i])
            u[t, i] = value
        if t < T - 1:
            Ft = F[t, b]
            for i in range(n):
                s = f[t, b, i]
                for j in range(n):
                    s += Ft[i, j] * x[t, j]
                for j in range(m):
                    s += Ft[i, n + j] * u[t, j]
                x[t + 1, i] = s


@kernel(nogil=True)
def _rollout(
    F, f, x_init, u_bar, x_bar, K, k, alphas, lower, upper, feedback, bounded, x_out, u_out
) -> None:
    B = u_bar.shape[1]
    for a in range(alphas.shape[0]):
        for b in range(B):
            rollout_element(
                b, F, f, x_init, u_bar, x_bar, K, k, alphas[a], feedback, bounded, lower,
                upper, x_out[a, :, b], u_out[a, :, b],
            )  # fmt: skip


def affine_rollout(
    F: Tensor,
    f: Tensor,
    x_init: Tensor,
    u: Tensor,
    x_bar: Tensor | None,
    K: Tensor | None,
    k: Tensor | None,
    alphas: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Roll affine dynamics out under the DDP control law for several step sizes.

    Args:
        F: (T-1, B, n, d) dynamics matrices.
        f: (T-1, B, n) dynamics offsets.
        x_init: (B, n) initial states.
        u: (T, B, m) nominal controls u_bar.
        x_bar: (T, B, n) nominal states, or None (no feedback: ``u`` is rolled out as it is).
        K: (T, B, m, n) feedback gains, or None.
        k: (T, B, m) feedforward steps, or None.
        alphas: (L,) step sizes.
        lower: (T, B, m) control lower bounds, or None.
        upper: (T, B, m) control upper bounds, or None (a missing side is unbounded).

    Returns:
        x: (L, T, B, n) and u: (L, T, B, m), one trajectory per step size.
    """
    T, B, m = u.shape
    n = x_init.shape[-1]
    dtype = u.dtype
    feedback = x_bar is not None and K is not None and k is not None
    if (lower is None) != (upper is None):
        lower = torch.full_like(u, -torch.inf) if lower is None else lower
        upper = torch.full_like(u, torch.inf) if upper is None else upper
    bounded = lower is not None and upper is not None
    L = alphas.shape[0]
    x_out = torch.empty(L, T, B, n, dtype=dtype)
    u_out = torch.empty(L, T, B, m, dtype=dtype)
    empty_tm = np.zeros((T, B, m), dtype=as_array(u).dtype)
    _rollout(
        as_array(F),
        as_array(f),
        as_array(x_init),
        as_array(u),
        as_array(x_bar) if feedback else np.zeros((T, B, n), dtype=empty_tm.dtype),  # type: ignore[arg-type]
        as_array(K) if feedback else np.zeros((T, B, m, n), dtype=empty_tm.dtype),  # type: ignore[arg-type]
        as_array(k) if feedback else empty_tm,  # type: ignore[arg-type]
        as_array(alphas.to(dtype)),
        as_array(lower) if bounded else empty_tm,  # type: ignore[arg-type]
        as_array(upper) if bounded else empty_tm,  # type: ignore[arg-type]
        feedback,
        bounded,
        x_out.numpy(),
        u_out.numpy(),
    )
    return x_out, u_out
