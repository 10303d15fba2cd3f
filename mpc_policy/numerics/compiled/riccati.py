"""Riccati recursions of box LQR, compiled: the kernels of ``mpc_policy.numerics.riccati``.

The same recursion as the torch functions (see ``mpc_policy.numerics.riccati`` for the math),

    Q_t = C_t + F_t' V_{t+1} F_t,  q_t = g_t + F_t' v_{t+1},
    k_t = box QP of (Q_uu, q_u),   K_t = -Q_uu,ff^{-1} Q_ux on the free rows,
    V_t = Q_xx + Q_xu K_t,         v_t = q_x + Q_xu k_t,

with the same regularization of an indefinite Q_uu (a diagonal shift growing 10x per try)
and the same box-QP semantics, run as one compiled loop over the batch elements and the time
steps: no tensor operation per step. ``backward_recursion`` and ``factorize`` below have the
torch functions' signatures and return the same ``Gains``; CPU tensors only.

Shapes, time first: C (T, B, d, d), g (T, B, d), F (T-1, B, n, d), bounds (T, B, m).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import (
    cholesky,
    clamp,
    larger,
    masked_cholesky,
    masked_solve_matrix,
    masked_solve_vector,
    set_identity,
)
from mpc_policy.numerics.compiled.box_qp import _free_set, box_qp_element, scratch
from mpc_policy.numerics.riccati import _MAX_SHIFTS, Gains

__all__ = ["backward_recursion", "factorize"]


@kernel(nogil=True, no_cpython_wrapper=True)
def _propagate(Q, q, F, V, v, VF, n, d) -> None:
    """Q (d, d) += F'VF and q (d,) += F'v for F (n, d), V (n, n), v (n,); VF (n, d) scratch."""
    for i in range(n):
        for j in range(d):
            s = 0.0
            for p in range(n):
                s += V[i, p] * F[p, j]
            VF[i, j] = s
    for i in range(d):
        s = 0.0
        for p in range(n):
            s += F[p, i] * v[p]
        q[i] += s
        for j in range(d):
            s = 0.0
            for p in range(n):
                s += F[p, i] * VF[p, j]
            Q[i, j] += s


@kernel(nogil=True, no_cpython_wrapper=True)
def _regularize(Q_uu, L, regularization, work, m):
    """Factor Q_uu (m, m) into L, shifting its diagonal in place until it is positive definite.

    Returns the shift added (0 if none was needed). When no shift helps (non-finite data),
    Q_uu becomes the identity and the shift reported is 0, as in the torch recursion.
    """
    if cholesky(Q_uu, L, m):
        return 0.0
    largest = 0.0
    for i in range(m):
        largest = larger(largest, abs(Q_uu[i, i]))
    mu = regularization * (1.0 + largest)
    shift = 0.0
    for _ in range(_MAX_SHIFTS):
        shift = mu if shift == 0.0 else 10.0 * shift
        for i in range(m):
            for j in range(m):
                work[i, j] = Q_uu[i, j]
            work[i, i] += shift
        if cholesky(work, L, m):
            for i in range(m):
                for j in range(m):
                    Q_uu[i, j] = work[i, j]
            return shift
    set_identity(Q_uu)
    set_identity(L)
    return 0.0


@kernel(nogil=True, no_cpython_wrapper=True)
def _feedback_update(Q, K, k, V, v, n, m) -> None:
    """[V, v] = [Q_xx, q_x] + Q_xu [K, k] (q_x in v on entry), V symmetrized."""
    for i in range(n):
        s = v[i]
        for p in range(m):
            s += Q[i, n + p] * k[p]
        v[i] = s
        for j in range(n):
            s = Q[i, j]
            for p in range(m):
                s += Q[i, n + p] * K[p, j]
            V[i, j] = s
    for i in range(n):
        for j in range(i + 1, n):
            mean = 0.5 * (V[i, j] + V[j, i])
            V[i, j] = mean
            V[j, i] = mean


# _nrt=False: no reference counting of the array views taken at every step (an atomic
# increment and decrement each, about 40 % of this loop's time); it allocates nothing
@kernel(nogil=True, no_cpython_wrapper=True, _nrt=False)
def _recursion_element(
    C,
    g,
    F,
    lower,
    upper,
    bounded,
    b,
    regularization,
    qp_max_iter,
    qp_tol,
    K,
    k,
    free,
    chol,
    Q,
    shift,
    scratch_arrays,
    n,
    m,
) -> None:
    """The recursion of element b (arrays (T, B, ...)); ``scratch_arrays`` from
    ``recursion_scratch``; n, m the sizes (constants where the caller passes literals)."""
    V, v, VF, q, work, k_box, grad, work_arrays = scratch_arrays
    T = g.shape[0]
    d = n + m
    for t in range(T - 1, -1, -1):
        Qt = Q[t, b]
        for i in range(d):
            q[i] = g[t, b, i]
            for j in range(d):
                Qt[i, j] = C[t, b, i, j]
        if t < T - 1:
            _propagate(Qt, q, F[t, b], V, v, VF, n, d)
        Q_uu = Qt[n:, n:]
        L = chol[t, b]
        shift[t, b] = _regularize(Q_uu, L, regularization, work, m)
        Kt, kt, ft = K[t, b], k[t, b], free[t, b]
        # K and k = -Q_uu^{-1} [Q_ux, q_u]; loops of length m, not slice assignments, so
        # that a constant m compiles in
        for i in range(m):
            ft[i] = True
        masked_solve_matrix(L, ft, Qt[n:, :n], Kt, -1.0, m, n)
        masked_solve_vector(L, ft, q[n:], kt, -1.0, m)
        if bounded:
            leaving = False
            for i in range(m):
                k_box[i] = clamp(kt[i], lower[t, b, i], upper[t, b, i])
                leaving = leaving or k_box[i] != kt[i]
            if leaving:
                for i in range(m):
                    s = q[n + i]
                    for j in range(m):
                        s += Q_uu[i, j] * k_box[j]
                    grad[i] = s
                _free_set(k_box, grad, lower[t, b], upper[t, b], ft)
                for i in range(m):
                    kt[i] = k_box[i]
                some_free = False
                for i in range(m):
                    some_free = some_free or ft[i]
                if not some_free:
                    # every control at a bound of the projection, pushed outward: the
                    # projection is the minimizer and there is no feedback
                    for i in range(m):
                        for j in range(n):
                            Kt[i, j] = 0.0
                    set_identity(L)
                else:
                    box_qp_element(
                        Q_uu,
                        q[n:],
                        lower[t, b],
                        upper[t, b],
                        kt,
                        ft,
                        L,
                        qp_max_iter,
                        qp_tol,
                        0.5,
                        20,
                        work_arrays,
                    )
                    masked_solve_matrix(L, ft, Qt[n:, :n], Kt, -1.0, m, n)
        for i in range(n):
            v[i] = q[i]
        _feedback_update(Qt, Kt, kt, V, v, n, m)


@kernel(nogil=True, no_cpython_wrapper=True)
def recursion_scratch(n, m, dtype):
    """Scratch arrays of ``_recursion_element`` for state size n and control size m."""
    d = n + m
    return (
        np.empty((n, n), dtype=dtype),
        np.empty(n, dtype=dtype),
        np.empty((n, d), dtype=dtype),
        np.empty(d, dtype=dtype),
        np.empty((m, m), dtype=dtype),
        np.empty(m, dtype=dtype),
        np.empty(m, dtype=dtype),
        scratch(m, dtype),
    )


@kernel(nogil=True)
def _recursion(
    C,
    g,
    F,
    lower,
    upper,
    bounded,
    active,
    regularization,
    qp_max_iter,
    qp_tol,
    K,
    k,
    free,
    chol,
    Q,
    shift,
) -> None:
    B, d = g.shape[1], g.shape[2]
    n = F.shape[2]
    scratch_arrays = recursion_scratch(n, d - n, g.dtype)
    settings = (regularization, qp_max_iter, qp_tol)
    for b in range(B):
        if active[b]:
            _recursion_element(
                C, g, F, lower, upper, bounded, b, *settings, K, k, free, chol, Q, shift,
                scratch_arrays, n, d - n,
            )  # fmt: skip


def backward_recursion(
    C: Tensor,
    g: Tensor,
    F: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    *,
    regularization: float = 1e-8,
    qp_max_iter: int = 30,
    active: Tensor | None = None,
    out: Gains | None = None,
) -> Gains:
    """Compiled ``mpc_policy.numerics.riccati.backward_recursion``: same arguments and ``Gains``.

    With ``active`` and ``out``, only the active elements are computed and written into
    ``out`` (in place); the others keep their gains.

    Args:
        C: (T, B, d, d) quadratic terms (symmetric).
        g: (T, B, d) gradient of the objective at the nominal trajectory.
        F: (T-1, B, n, d) dynamics Jacobians.
        lower: (T, B, m) lower bounds on the control step, or None (unbounded).
        upper: (T, B, m) upper bounds on the control step, or None.
        regularization: first diagonal shift for a Q_uu that is not positive definite.
        qp_max_iter: projected-Newton iterations per box QP.
        active: (B,) the elements to compute, or None for all.
        out: gains of shape (T, B, ...) made by this function, to update in place.
    """
    T, B, d = g.shape
    n = F.shape[-2]
    m = d - n
    dtype = g.dtype
    bounded = lower is not None and upper is not None
    if bounded:
        assert lower is not None and upper is not None
        lo, hi = as_array(lower), as_array(upper)
    else:
        lo = hi = np.zeros((T, B, m), dtype=as_array(g).dtype)
    if out is None:
        K = torch.empty(T, B, m, n, dtype=dtype)
        k = torch.empty(T, B, m, dtype=dtype)
        free = torch.empty(T, B, m, dtype=torch.bool)
        chol = torch.empty(T, B, m, m, dtype=dtype)
        Q = torch.empty(T, B, d, d, dtype=dtype)
        shift = torch.zeros(T, B, dtype=dtype)
    else:
        K, k, free, chol, Q, shift = out
        assert all(z.is_contiguous() for z in out), "out: gains made by this function"
    mask = np.ones(B, dtype=np.bool_) if active is None else active.contiguous().numpy()
    _recursion(
        as_array(C),
        as_array(g),
        as_array(F),
        lo,
        hi,
        bounded,
        mask,
        float(regularization),
        int(qp_max_iter),
        float(torch.finfo(dtype).eps ** 0.5),
        K.numpy(),
        k.numpy(),
        free.numpy(),
        chol.numpy(),
        Q.numpy(),
        shift.numpy(),
    )
    return Gains(K, k, free, chol, Q, shift)


@kernel(nogil=True)
def _factorize(C, F, free, regularization, K, chol, Q, shift) -> None:
    T, B, d = C.shape[0], C.shape[1], C.shape[2]
    n = F.shape[2]
    m = d - n
    dtype = C.dtype
    V = np.empty((n, n), dtype=dtype)
    v = np.zeros(n, dtype=dtype)
    VF = np.empty((n, d), dtype=dtype)
    q = np.zeros(d, dtype=dtype)
    work = np.empty((m, m), dtype=dtype)
    # a block of a larger matrix, as the recursion's Q_uu: one compiled _regularize for both
    masked = np.empty((d, d), dtype=dtype)[n:, n:]
    zeros = np.zeros(m, dtype=dtype)
    for b in range(B):
        for t in range(T - 1, -1, -1):
            Qt = Q[t, b]
            for i in range(d):
                for j in range(d):
                    Qt[i, j] = C[t, b, i, j]
            if t < T - 1:
                _propagate(Qt, q, F[t, b], V, v, VF, n, d)
            ft, L = free[t, b], chol[t, b]
            shift[t, b] = 0.0
            if not masked_cholesky(Qt[n:, n:], ft, L, work):
                # only Q_uu on the free set must be positive definite: shift that block
                for i in range(m):
                    for j in range(m):
                        if ft[i] and ft[j]:
                            masked[i, j] = Qt[n + i, n + j]
                        else:
                            masked[i, j] = 1.0 if i == j else 0.0
                shift[t, b] = _regularize(masked, L, regularization, work, m)
                for i in range(m):
                    for j in range(m):
                        if ft[i] and ft[j]:
                            Qt[n + i, n + j] = masked[i, j]
                masked_cholesky(Qt[n:, n:], ft, L, work)
            masked_solve_matrix(L, ft, Qt[n:, :n], K[t, b], -1.0, m, n)
            v[:] = 0.0
            _feedback_update(Qt, K[t, b], zeros, V, v, n, m)


def factorize(
    C: Tensor,
    F: Tensor,
    free: Tensor,
    *,
    regularization: float = 1e-8,
) -> Gains:
    """Compiled ``mpc_policy.numerics.riccati.factorize``: same arguments and ``Gains`` (k = 0).

    Args:
        C: (T, B, d, d) quadratic terms.
        F: (T-1, B, n, d) dynamics Jacobians.
        free: (T, B, m) free controls at the solution.
        regularization: first diagonal shift for a Q_uu,ff that is not positive definite.
    """
    T, B, d = C.shape[0], C.shape[1], C.shape[-1]
    n = F.shape[-2]
    m = d - n
    dtype = C.dtype
    K = torch.empty(T, B, m, n, dtype=dtype)
    chol = torch.empty(T, B, m, m, dtype=dtype)
    Q = torch.empty(T, B, d, d, dtype=dtype)
    shift = torch.empty(T, B, dtype=dtype)
    free = free.detach().contiguous()
    _factorize(
        as_array(C),
        as_array(F),
        free.numpy(),
        float(regularization),
        K.numpy(),
        chol.numpy(),
        Q.numpy(),
        shift.numpy(),
    )
    return Gains(K, torch.zeros(T, B, m, dtype=dtype), free, chol, Q, shift)
