"""Projected-Newton box QP of one batch element, compiled: the kernel of
``mpc_policy.numerics.box_qp``.

Solves min 1/2 x'Qx + q'x s.t. lower <= x <= upper with the same iterations, stopping tests
and line search as the torch function (Bertsekas, 1982; Tassa et al., 2014), one element at
a time, so the torch function and this kernel are each other's oracle. ``box_qp`` below has
the torch function's signature.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.box_qp import BoxQPResult
from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import (
    clamp,
    larger,
    masked_cholesky,
    masked_solve_vector,
    set_identity,
)

__all__ = ["box_qp", "box_qp_element", "scratch"]

_ARMIJO = 0.1


@kernel(nogil=True, no_cpython_wrapper=True)
def _gradient(Q, q, x, g) -> None:
    """g (m,) = Q x + q."""
    m = q.shape[0]
    for i in range(m):
        s = q[i]
        for j in range(m):
            s += Q[i, j] * x[j]
        g[i] = s


@kernel(nogil=True, no_cpython_wrapper=True)
def _free_set(x, g, lower, upper, free) -> None:
    """free (m,): not at a bound with the gradient g pushing outward."""
    for i in range(x.shape[0]):
        if g[i] > 0.0:
            free[i] = not x[i] <= lower[i]
        else:
            free[i] = not (x[i] >= upper[i] and g[i] < 0.0)


@kernel(nogil=True, no_cpython_wrapper=True)
def _small(dx, x, tol) -> bool:
    step = 0.0
    size = 0.0
    for i in range(x.shape[0]):
        step = larger(step, abs(dx[i]))
        size = larger(size, abs(x[i]))
    return step <= tol * (1.0 + size)


@kernel(nogil=True, no_cpython_wrapper=True)
def _armijo(Q, g, x, trial) -> bool:
    """Sufficient decrease of the quadratic from x to trial (gradient g at x)."""
    m = x.shape[0]
    predicted = 0.0
    curvature = 0.0
    for i in range(m):
        step_i = trial[i] - x[i]
        predicted += step_i * g[i]
        row = 0.0
        for j in range(m):
            row += Q[i, j] * (trial[j] - x[j])
        curvature += step_i * row
    return predicted + 0.5 * curvature <= _ARMIJO * predicted


@kernel(nogil=True, no_cpython_wrapper=True)
def _keep(free, L, free_out, chol_out) -> None:
    """free_out (m,) = free, chol_out (m, m) = L: element copies (a slice assignment
    compiles numba's shape-mismatch reporting, seconds of compile time)."""
    m = free.shape[0]
    for i in range(m):
        free_out[i] = free[i]
        for j in range(m):
            chol_out[i, j] = L[i, j]


@kernel(nogil=True, no_cpython_wrapper=True)
def scratch(m, dtype):
    """Work arrays of ``box_qp_element`` for m variables, allocated once per batch."""
    vectors = np.empty((3, m), dtype=dtype)
    masks = np.empty((2, m), dtype=np.bool_)
    matrices = np.empty((2, m, m), dtype=dtype)
    return vectors, masks, matrices


# _nrt=False: no reference counting of its views (it allocates nothing; see riccati.py)
@kernel(nogil=True, no_cpython_wrapper=True, _nrt=False)
def box_qp_element(
    Q, q, lower, upper, x, free_out, chol_out, max_iter, tol, decay, max_line_search, work_arrays
):
    """Solve one box QP in place.

    Args:
        Q: (m, m) symmetric positive definite.
        q: (m,) linear term.
        lower, upper: (m,) bounds.
        x: (m,) warm start on entry (projected here), minimizer on exit.
        free_out: (m,) free set at the solution (output).
        chol_out: (m, m) factor of Q on that free set, identity elsewhere (output).
        max_iter, tol, decay, max_line_search: as ``mpc_policy.numerics.box_qp.box_qp``.
        work_arrays: the result of ``scratch(m, dtype)``.

    Returns:
        (converged, iterations).
    """
    m = q.shape[0]
    vectors, masks, matrices = work_arrays
    g, dx, trial = vectors[0], vectors[1], vectors[2]
    free, free_prev = masks[0], masks[1]
    L, work = matrices[0], matrices[1]
    for i in range(m):
        x[i] = clamp(x[i], lower[i], upper[i])
    _gradient(Q, q, x, g)
    _free_set(x, g, lower, upper, free)
    n_free = 0  # a loop, not free.any(): numba's any compiles a kernel of its own
    for i in range(m):
        n_free += free[i]
    if n_free == 0:
        for i in range(m):
            free_out[i] = free[i]
        set_identity(chol_out)
        return True, 0
    masked_cholesky(Q, free, L, work)
    masked_solve_vector(L, free, g, dx, -1.0, m)
    done = _small(dx, x, tol)
    if done:
        for i in range(m):
            x[i] = clamp(x[i] + dx[i], lower[i], upper[i])
    _keep(free, L, free_out, chol_out)
    iterations = 0
    for it in range(1, max_iter + 1):
        if done:
            break
        iterations += 1
        # the full Newton step first, then the projection arc alpha = decay^j
        exact_step = True
        for i in range(m):
            trial[i] = clamp(x[i] + dx[i], lower[i], upper[i])
            exact_step = exact_step and trial[i] == x[i] + dx[i]
        if not (max_line_search == 1 or _armijo(Q, g, x, trial)):
            exact_step = False
            alpha = 1.0
            for j in range(1, max_line_search):
                alpha *= decay
                for i in range(m):
                    trial[i] = clamp(x[i] + alpha * dx[i], lower[i], upper[i])
                if j == max_line_search - 1 or _armijo(Q, g, x, trial):
                    break
        for i in range(m):
            x[i] = trial[i]
            free_prev[i] = free[i]
        _gradient(Q, q, x, g)
        _free_set(x, g, lower, upper, free)
        same = True
        for i in range(m):
            same = same and free[i] == free_prev[i]
        if exact_step and same:
            # a full Newton step inside the box on an unchanged free set is the minimizer
            _keep(free_prev, L, free_out, chol_out)
            done = True
        if it == max_iter or done:
            break
        masked_cholesky(Q, free, L, work)
        masked_solve_vector(L, free, g, dx, -1.0, m)
        if _small(dx, x, tol):
            for i in range(m):
                x[i] = clamp(x[i] + dx[i], lower[i], upper[i])
            _keep(free, L, free_out, chol_out)
            done = True
    if not done:
        # out of iterations: the factorization at the last iterate
        _gradient(Q, q, x, g)
        _free_set(x, g, lower, upper, free_out)
        masked_cholesky(Q, free_out, chol_out, work)
    return done, iterations


@kernel(nogil=True)
def _box_qp_batch(
    Q, q, lower, upper, x, free, chol, converged, iterations, max_iter, tol, decay, max_ls
) -> None:
    work_arrays = scratch(q.shape[1], q.dtype)
    for b in range(q.shape[0]):
        done, its = box_qp_element(
            Q[b],
            q[b],
            lower[b],
            upper[b],
            x[b],
            free[b],
            chol[b],
            max_iter,
            tol,
            decay,
            max_ls,
            work_arrays,
        )
        converged[b] = done
        iterations[b] = its


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
    """Compiled ``mpc_policy.numerics.box_qp.box_qp`` (same arguments, shapes and result), CPU only.

    Args:
        Q: (B, m, m) symmetric positive definite matrices.
        q: (B, m) linear terms.
        lower: (B, m) lower bounds.
        upper: (B, m) upper bounds.
        x_init: (B, m) warm start; zeros if None.
        max_iter, tol, line_search_decay, max_line_search: as the torch function.
    """
    B, m = q.shape
    if tol is None:
        tol = torch.finfo(q.dtype).eps ** 0.5
    x = torch.zeros_like(q) if x_init is None else x_init.detach().clone()
    x = x.contiguous()
    free = torch.empty(B, m, dtype=torch.bool)
    chol = torch.empty(B, m, m, dtype=q.dtype)
    converged = torch.empty(B, dtype=torch.bool)
    iterations = torch.empty(B, dtype=torch.long)
    lower, upper = lower.expand(B, m), upper.expand(B, m)
    arrays = [as_array(z) for z in (Q, q, lower, upper)]
    _box_qp_batch(
        *arrays,
        x.numpy(),
        free.numpy(),
        chol.numpy(),
        converged.numpy(),
        iterations.numpy(),
        max_iter,
        float(tol),
        float(line_search_decay),
        max_line_search,
    )
    return BoxQPResult(x, free, chol, converged, iterations)
