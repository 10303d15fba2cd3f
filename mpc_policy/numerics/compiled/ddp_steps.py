"""The steps of the compiled box-DDP loop (``ddp._solve``) for one batch element: rollout,
local model, curvature of the Lagrangian, fixed-point residual and the curvature test at a
fixed point. Each reads the element's rows of whole-trajectory arrays; the model is a
``ddp.Twins`` (its compiled twins, built-in or traced). Private to ``ddp``.
"""

from __future__ import annotations

import numpy as np

from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import cholesky, clamp, larger, masked_cholesky
from mpc_policy.numerics.compiled.models import (
    cost_quadratize,
    cost_value,
    dynamics_curvature,
    dynamics_jacobian,
    dynamics_step,
)
from mpc_policy.solution import SOURCE_COST, SOURCE_DYNAMICS


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _rollout(tw, b, x_init, x_bar, u_bar, K, k, alpha, feedback, lower, upper, x, u, n, m) -> float:
    """Element b's rollout into x (T, n), u (T, m) under u_t = clamp(u_bar_t (+ alpha k_t +
    K_t (x_t - x_bar_t) with ``feedback``)); returns its cost. x_bar (T, n), u_bar (T, m),
    K (T, 1, m, n), k (T, 1, m) are the element's. The sizes n, m are arguments here and
    below: the caller may pass constants (``ddp._solve``)."""
    dk, p, pc, ck, Cq, cq, wgl, code, work = tw
    T = u.shape[0]
    for i in range(n):
        x[0, i] = x_init[b, i]
    total = 0.0
    for t in range(T):
        for i in range(m):
            value = u_bar[t, i]
            if feedback:
                value += alpha * k[t, 0, i]
                for j in range(n):
                    value += K[t, 0, i, j] * (x[t, j] - x_bar[t, j])
            u[t, i] = clamp(value, lower[t, b, i], upper[t, b, i])
        total += cost_value(ck, Cq, cq, wgl, b, x, u, t, n, n + m)
        if t < T - 1:
            dynamics_step(dk, p, pc, b, x, u, t, code, work)
    return total


# _nrt=True stated: a callee takes its caller's setting otherwise, and the element solve
# runs without reference counting while this (ravel) and _indefinite (scratch) allocate
@kernel(nogil=True, _nrt=True, no_cpython_wrapper=True)
def _finite(z) -> bool:
    """Whether every entry of a contiguous array is finite: z * 0 is 0 for a finite entry
    and NaN otherwise, summed in four independent chains (no branch, no temporary)."""
    flat = z.ravel()
    size = flat.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    whole = size - size % 4
    for i in range(0, whole, 4):
        s0 += flat[i] * 0.0
        s1 += flat[i + 1] * 0.0
        s2 += flat[i + 2] * 0.0
        s3 += flat[i + 3] * 0.0
    for i in range(whole, size):
        s0 += flat[i] * 0.0
    return s0 + s1 + s2 + s3 == 0.0


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _local_model(tw, b, x, u, C, g, F, w_row, th_row, n, m) -> None:
    """C (T, 1, d, d), g (T, 1, d), F (T-1, 1, n, d) at x (T, n), u (T, m)."""
    dk, p, pc, ck, Cq, cq, wgl, code, work = tw
    T = x.shape[0]
    for t in range(T):
        cost_quadratize(ck, Cq, cq, wgl, b, x, u, t, C, g, n, n + m)
        if t < T - 1:
            dynamics_jacobian(dk, p, pc, b, x, u, t, F, w_row, th_row, code, work)


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _nonfinite_source(C, g, F) -> int:
    """The local model's non-finite source: 0, ``SOURCE_DYNAMICS`` or ``SOURCE_COST``."""
    if not _finite(F):
        return SOURCE_DYNAMICS
    if not (_finite(C) and _finite(g)):
        return SOURCE_COST
    return 0


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _add_curvature(tw, b, x, u, g, F, C, lam, w_row, th_row) -> None:
    """C[:-1] += sum_i lam_{t+1,i} d2 f_i at the trajectory, lam the costates of (g, F)."""
    dk, p, pc, code, work = tw[0], tw[1], tw[2], tw[7], tw[8]
    T, n = x.shape
    for i in range(n):
        lam[T - 1, i] = g[T - 1, 0, i]
    for t in range(T - 2, -1, -1):
        for i in range(n):
            s = g[t, 0, i]
            for q in range(n):
                s += F[t, 0, q, i] * lam[t + 1, q]
            lam[t, i] = s
    for t in range(T - 1):
        dynamics_curvature(dk, p, pc, b, x, u, t, lam, C, w_row, th_row, code, work)


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _residual(b, F, u_bar, K, k, lower, upper, dx, du, n, m) -> float:
    """The full step on the linearized dynamics, dx_1 = 0, u_t = clamp(u_bar_t + k_t +
    K_t dx_t), dx_{t+1} = F_t [dx_t; u_t - u_bar_t]: max |u - u_bar| / (1 + max |u_bar|).
    dx (2, n) and du (m,) are scratch."""
    T = u_bar.shape[0]
    for i in range(n):
        dx[0, i] = 0.0
    change = 0.0
    size = 0.0
    for t in range(T):
        now = t % 2
        for i in range(m):
            value = u_bar[t, i] + k[t, 0, i]
            for j in range(n):
                value += K[t, 0, i, j] * dx[now, j]
            value = clamp(value, lower[t, b, i], upper[t, b, i])
            du[i] = value - u_bar[t, i]
            change = larger(change, abs(du[i]))
            size = larger(size, abs(u_bar[t, i]))
        if t < T - 1:
            for i in range(n):
                s = 0.0
                for j in range(n):
                    s += F[t, 0, i, j] * dx[now, j]
                for j in range(m):
                    s += F[t, 0, i, n + j] * du[j]
                dx[1 - now, i] = s
    return change / (1.0 + size)


@kernel(nogil=True, _nrt=True, no_cpython_wrapper=True)
def _indefinite(C, F, K, free, regularization, n) -> bool:
    """Whether the stopped element's point is no minimum (``health.indefinite_rows``): some
    C_t is not positive definite after the first shift, and the recursion without
    regularization, on the free set and with the feedback K of the last pass, meets a Q_uu
    indefinite on the free controls beyond the first shift."""
    T, d = C.shape[0], C.shape[2]
    m = d - n
    dtype = C.dtype
    work = np.empty((d, d), dtype=dtype)
    L = np.empty((d, d), dtype=dtype)
    suspect = False
    for t in range(T):
        largest = 0.0
        for i in range(d):
            largest = larger(largest, abs(C[t, 0, i, i]))
        for i in range(d):  # element copies: a slice assignment compiles numba's
            for j in range(d):  # shape-mismatch reporting, seconds of compile time
                work[i, j] = C[t, 0, i, j]
        for i in range(d):
            work[i, i] += regularization * (1.0 + largest)
        if not cholesky(work, L, d):
            suspect = True
            break
    if not suspect:
        return False
    V = np.zeros((n, n), dtype=dtype)
    Q = np.empty((d, d), dtype=dtype)
    Q_uu = np.empty((m, m), dtype=dtype)
    L_m = np.empty((m, m), dtype=dtype)
    work_m = np.empty((m, m), dtype=dtype)
    bad = False
    for t in range(T - 1, -1, -1):
        for i in range(d):
            for j in range(d):
                Q[i, j] = C[t, 0, i, j]
        if t < T - 1:
            Ft = F[t, 0]
            for i in range(d):
                for j in range(d):
                    s = 0.0
                    for p in range(n):
                        for q in range(n):
                            s += Ft[p, i] * V[p, q] * Ft[q, j]
                    Q[i, j] += s
        largest = 0.0
        for i in range(m):
            largest = larger(largest, abs(Q[n + i, n + i]))
        for i in range(m):
            for j in range(m):
                Q_uu[i, j] = Q[n + i, n + j]
        for i in range(m):
            Q_uu[i, i] += regularization * (1.0 + largest)
        if not masked_cholesky(Q_uu, free[t, 0], L_m, work_m):
            bad = True
        for i in range(n):
            for j in range(n):
                s = Q[i, j]
                for p in range(m):
                    s += Q[i, n + p] * K[t, 0, p, j]
                V[i, j] = s
        for i in range(n):
            for j in range(i + 1, n):
                mean = 0.5 * (V[i, j] + V[j, i])
                V[i, j] = mean
                V[j, i] = mean
    return bad
