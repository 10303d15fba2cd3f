"""Small dense linear algebra for one batch element, compiled by numba.

The kernels of this package work element by element on matrices of a few rows (m controls,
n states), where a hand-written loop beats a call into LAPACK. Every function here keeps no
state, allocates nothing and writes its result into an argument.

Shapes: ``A`` (m, m) symmetric, ``L`` (m, m) lower factor, ``free`` (m,) booleans,
``b`` (m,) or ``B`` (m, k) right-hand sides.
"""

from __future__ import annotations

import math

from mpc_policy.numerics.compiled._cache import kernel

__all__ = [
    "cholesky",
    "copy_matrix",
    "masked_cholesky",
    "masked_solve_matrix",
    "masked_solve_vector",
    "set_identity",
    "store_element",
    "store_slot",
]


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def cholesky(A, L) -> bool:
    """Lower Cholesky factor of A (m, m) into L (m, m); False where A is not positive definite.

    A pivot that is not > 0 (NaN included) fails, as LAPACK's potrf.
    """
    m = A.shape[0]
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


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
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
    return cholesky(work, L)


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def set_identity(L) -> None:
    """Overwrite L (m, m) with the identity."""
    m = L.shape[0]
    for i in range(m):
        for j in range(m):
            L[i, j] = 1.0 if i == j else 0.0


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def masked_solve_vector(L, free, b, y, scale) -> None:
    """y (m,) = scale * Q_ff^{-1} b_f on the free set (m,), 0 on the clamped set.

    L (m, m) is the factor of ``masked_cholesky``; b (m,) the right-hand side. y may not
    alias b.
    """
    m = L.shape[0]
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


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def masked_solve_matrix(L, free, B, Y, scale) -> None:
    """Y (m, k) = scale * Q_ff^{-1} B_f column by column, 0 on the clamped rows.

    B (m, k) may be a strided view; Y may not alias B.
    """
    m = L.shape[0]
    for col in range(B.shape[1]):
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


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def store_element(z, z_all, b) -> None:
    """z_all[:, b] = z for z (T, k), z_all (T, B, k), element by element: a slice assignment
    would compile numba's shape-mismatch reporting, seconds of compile time."""
    for t in range(z.shape[0]):
        for i in range(z.shape[1]):
            z_all[t, b, i] = z[t, i]


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def copy_matrix(A, out) -> None:
    """out (r, c) = A (r, c), element by element (any layouts; see ``store_element``)."""
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            out[i, j] = A[i, j]


@kernel(nogil=True, no_cpython_wrapper=True, no_cfunc_wrapper=True)
def store_slot(z, z_all, b) -> None:
    """z_all[:, b] = z[:, 0] for C-contiguous z (T, 1, ...) and z_all (T, B, ...) of the same
    trailing shape, element by element (see ``store_element``)."""
    T = z.shape[0]
    size = z.size // T
    source = z.reshape(T, size)
    target = z_all.reshape(T, z_all.shape[1], size)
    for t in range(T):
        for i in range(size):
            target[t, b, i] = source[t, i]
