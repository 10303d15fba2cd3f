"""Small dense linear algebra for one batch element, compiled by numba.

The kernels of this package work element by element on matrices of a few rows (m controls,
n states), where a hand-written loop beats a call into LAPACK. Every function here keeps no
state, allocates nothing and writes its result into an argument. ``larger``, ``smaller``
and ``clamp`` are Python's ``max``, ``min`` of two and ``min(max(value, lower), upper)``,
comparison for comparison (the same result for NaN), without numba's builtins (a kernel of
their own each, to compile and emit for every pair of types).

Shapes: ``A`` (m, m) symmetric, ``L`` (m, m) lower factor, ``free`` (m,) booleans,
``b`` (m,) or ``B`` (m, k) right-hand sides.
"""

from __future__ import annotations

import math

from mpc_policy.numerics.compiled._cache import kernel

__all__ = [
    "cholesky",
    "clamp",
    "larger",
    "masked_cholesky",
    "masked_solve_matrix",
    "masked_solve_vector",
    "set_identity",
    "smaller",
    "store_element",
]


@kernel(nogil=True, no_cpython_wrapper=True)
def cholesky(A, L, m) -> bool:
    """Lower Cholesky factor of A (m, m) into L (m, m); False where A is not positive definite.

    A pivot that is not > 0 (NaN included) fails, as LAPACK's potrf. The size m is an
    argument (as in the solves below) so that a caller passing a constant compiles it in.
    """
    for j in range(m):
        s = A[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:
            return False
        root = math.sqrt(s)
        L[j, j] = root
        for i in range(j + 1, m):
            s = A[i, j]
            for p in range(j):
                s -= L[i, p] * L[j, p]
            L[i, j] = s / root
        for i in range(j):
            L[i, j] = 0.0
    return True


@kernel(nogil=True, no_cpython_wrapper=True)
def masked_cholesky(A, free, L, work) -> bool:
    """Factor of A (m, m) on the free set (m,), identity elsewhere, into L (m, m).

    ``work`` (m, m) is scratch space. Same result as ``mpc_policy.numerics.box_qp.masked_cholesky``.
    """
    m = A.shape[0]
    for i in range(m):
        for j in range(m):
            if free[i] and free[j]:
                work[i, j] = A[i, j]
            else:
                work[i, j] = 1.0 if i == j else 0.0
    return cholesky(work, L, m)


@kernel(nogil=True, no_cpython_wrapper=True)
def set_identity(L) -> None:
    """Overwrite L (m, m) with the identity."""
    m = L.shape[0]
    for i in range(m):
        for j in range(m):
            L[i, j] = 1.0 if i == j else 0.0


@kernel(nogil=True, no_cpython_wrapper=True)
def masked_solve_vector(L, free, b, y, scale, m) -> None:
    """y (m,) = scale * Q_ff^{-1} b_f on the free set (m,), 0 on the clamped set.

    L (m, m) is the factor of ``masked_cholesky``; b (m,) the right-hand side. y may not
    alias b.
    """
    for i in range(m):  # L z = b_f
        s = b[i] if free[i] else 0.0
        for p in range(i):
            s -= L[i, p] * y[p]
        y[i] = s / L[i, i]
    for i in range(m - 1, -1, -1):  # L' y = z
        s = y[i]
        for p in range(i + 1, m):
            s -= L[p, i] * y[p]
        y[i] = s / L[i, i]
    for i in range(m):
        y[i] = scale * y[i] if free[i] else 0.0


@kernel(nogil=True, no_cpython_wrapper=True)
def masked_solve_matrix(L, free, B, Y, scale, m, k) -> None:
    """Y (m, k) = scale * Q_ff^{-1} B_f column by column, 0 on the clamped rows.

    B (m, k) may be a strided view; Y may not alias B.
    """
    for col in range(k):
        for i in range(m):
            s = B[i, col] if free[i] else 0.0
            for p in range(i):
                s -= L[i, p] * Y[p, col]
            Y[i, col] = s / L[i, i]
        for i in range(m - 1, -1, -1):
            s = Y[i, col]
            for p in range(i + 1, m):
                s -= L[p, i] * Y[p, col]
            Y[i, col] = s / L[i, i]
        for i in range(m):
            Y[i, col] = scale * Y[i, col] if free[i] else 0.0


@kernel(nogil=True, no_cpython_wrapper=True)
def store_element(z, z_all, b) -> None:
    """z_all[:, b] = z for z (T, k), z_all (T, B, k), element by element: a slice assignment
    would compile numba's shape-mismatch reporting, seconds of compile time."""
    for t in range(z.shape[0]):
        for i in range(z.shape[1]):
            z_all[t, b, i] = z[t, i]


@kernel(nogil=True, no_cpython_wrapper=True)
def larger(a, b):
    """max(a, b): b where b > a, else a."""
    return b if b > a else a


@kernel(nogil=True, no_cpython_wrapper=True)
def smaller(a, b):
    """min(a, b): b where b < a, else a."""
    return b if b < a else a


@kernel(nogil=True, no_cpython_wrapper=True)
def clamp(value, lower, upper):
    """min(max(value, lower), upper)."""
    high = lower if lower > value else value
    return upper if upper < high else high
