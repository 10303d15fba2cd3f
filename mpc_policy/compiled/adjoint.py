"""The implicit backward pass of box LQR, compiled: the kernels of ``mpc_policy.adjoint``.

``adjoint_solve`` is the backward LQR of eq. (9) (c = dL/dtau, f = 0, x_init = 0, clamped
controls fixed at 0) with the forward pass's gains and Cholesky factors, and
``costates_from_gradient`` the costates of eq. (7). Same signatures and results as the torch
functions; CPU tensors only. Shapes are time first: F (T-1, B, n, d), tau (T, B, d).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

from mpc_policy.adjoint import ImplicitGradients
from mpc_policy.compiled._arrays import as_array
from mpc_policy.compiled._linalg import masked_solve_vector
from mpc_policy.riccati import Gains

__all__ = ["adjoint_solve", "costates_from_gradient", "implicit_gradients"]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _adjoint_element(K, chol, free, F, grad_tau, dtau, b, q, v, k) -> None:
    """Eq. (9) for element b into dtau[:, b]; q (d,), v (n,), k (T, m) are scratch."""
    T, _, d = grad_tau.shape
    n = K.shape[3]
    m = d - n
    for t in range(T - 1, -1, -1):
        q[:] = grad_tau[t, b]
        if t < T - 1:
            Ft = F[t, b]
            for i in range(d):
                s = 0.0
                for p in range(n):
                    s += Ft[p, i] * v[p]
                q[i] += s
        masked_solve_vector(chol[t, b], free[t, b], q[n:], k[t], -1.0)
        # clamped rows of K and k vanish, so v = q_x + K' q_u
        Kt = K[t, b]
        for i in range(n):
            s = q[i]
            for p in range(m):
                s += Kt[p, i] * q[n + p]
            v[i] = s
    out = dtau[:, b]
    for i in range(n):
        out[0, i] = 0.0
    for t in range(T):
        Kt = K[t, b]
        for i in range(m):
            s = k[t, i]
            for j in range(n):
                s += Kt[i, j] * out[t, j]
            out[t, n + i] = s
        if t < T - 1:
            Ft = F[t, b]
            for i in range(n):
                s = 0.0
                for j in range(d):
                    s += Ft[i, j] * out[t, j]
                out[t + 1, i] = s


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _adjoint(K, chol, free, F, grad_tau, dtau) -> None:
    T, B, d = grad_tau.shape
    n = K.shape[3]
    dtype = grad_tau.dtype
    q = np.empty(d, dtype=dtype)
    v = np.empty(n, dtype=dtype)
    k = np.empty((T, d - n), dtype=dtype)
    for b in range(B):
        _adjoint_element(K, chol, free, F, grad_tau, dtau, b, q, v, k)


def adjoint_solve(gains: Gains, F: Tensor, grad_tau: Tensor) -> Tensor:
    """Compiled ``mpc_policy.adjoint.adjoint_solve``.

    Args:
        gains: factorization at the solution (its free set fixes the clamped controls).
        F: (T-1, B, n, d) dynamics Jacobians.
        grad_tau: (T, B, d) gradient of the loss with respect to tau.

    Returns:
        dtau: (T, B, d).
    """
    dtau = torch.empty(grad_tau.shape, dtype=grad_tau.dtype)
    _adjoint(
        *(as_array(z) for z in (gains.K, gains.chol, gains.free, F, grad_tau)),
        dtau.numpy(),
    )
    return dtau


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _costates(grad, F, lam) -> None:
    T, B = grad.shape[0], grad.shape[1]
    n = lam.shape[2]
    for b in range(B):
        for i in range(n):
            lam[T - 1, b, i] = grad[T - 1, b, i]
        for t in range(T - 2, -1, -1):
            Ft = F[t, b]
            for i in range(n):
                s = grad[t, b, i]
                for p in range(n):
                    s += Ft[p, i] * lam[t + 1, b, p]
                lam[t, b, i] = s


def costates_from_gradient(grad: Tensor, F: Tensor) -> Tensor:
    """Compiled ``mpc_policy.adjoint.costates_from_gradient``.

    Args:
        grad: (T, B, d) gradient of the objective with respect to tau_t.
        F: (T-1, B, n, d) dynamics Jacobians.

    Returns:
        lam: (T, B, n).
    """
    T, B, _ = grad.shape
    n = F.shape[-2]
    lam = torch.empty(T, B, n, dtype=grad.dtype)
    _costates(as_array(grad), as_array(F), lam.numpy())
    return lam


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _costates_of(C, offset, F, point, lam, stationarity, b) -> None:
    """Costates lam (T, n) of element b for the gradient C_t point_t + offset_t (eq. (7)).

    ``stationarity`` (T, d) receives that gradient.
    """
    T, d = point.shape
    n = lam.shape[1]
    for t in range(T - 1, -1, -1):
        Ct = C[t, b]
        for i in range(d):
            s = offset[t, b, i]
            for j in range(d):
                s += Ct[i, j] * point[t, j]
            stationarity[t, i] = s
        for i in range(n):
            s = stationarity[t, i]
            if t < T - 1:
                Ft = F[t, b]
                for p in range(n):
                    s += Ft[p, i] * lam[t + 1, p]
            lam[t, i] = s


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _implicit(
    K,
    chol,
    free,
    C,
    c,
    F,
    tau,
    grad_tau,
    need_C,
    need_F,
    need_bounds,
    dtau,
    dlam,
    dC,
    dF,
    residual_u,
) -> None:
    T, B, d = tau.shape
    n = dlam.shape[2]
    m = d - n
    dtype = tau.dtype
    lam = np.empty((T, n), dtype=dtype)
    dlam_b = np.empty((T, n), dtype=dtype)
    stationarity = np.empty((T, d), dtype=dtype)
    point = np.empty((T, d), dtype=dtype)
    q = np.empty(d, dtype=dtype)
    v = np.empty(n, dtype=dtype)
    k = np.empty((T, m), dtype=dtype)
    for b in range(B):  # one element at a time, while its data are in cache
        _adjoint_element(K, chol, free, F, grad_tau, dtau, b, q, v, k)  # eq. (9)
        point[:, :] = dtau[:, b]
        _costates_of(C, grad_tau, F, point, dlam_b, stationarity, b)
        dlam[:, b] = dlam_b
        if need_bounds:
            for t in range(T):
                for i in range(m):
                    s = stationarity[t, n + i]
                    if t < T - 1:
                        Ft = F[t, b]
                        for p in range(n):
                            s += Ft[p, n + i] * dlam_b[t + 1, p]
                    residual_u[t, b, i] = s
        if need_C:  # eq. (8)
            for t in range(T):
                for i in range(d):
                    for j in range(d):
                        dC[t, b, i, j] = 0.5 * (
                            dtau[t, b, i] * tau[t, b, j] + tau[t, b, i] * dtau[t, b, j]
                        )
        if need_F:
            point[:, :] = tau[:, b]
            _costates_of(C, c, F, point, lam, stationarity, b)  # eq. (7)
            for t in range(T - 1):
                for i in range(n):
                    for j in range(d):
                        dF[t, b, i, j] = (
                            dlam_b[t + 1, i] * tau[t, b, j] + lam[t + 1, i] * dtau[t, b, j]
                        )


def implicit_gradients(
    gains: Gains,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    tau: Tensor,
    grad_tau: Tensor,
    need_C: bool,
    need_F: bool,
    need_bounds: bool,
) -> ImplicitGradients:
    """Compiled ``mpc_policy.adjoint.implicit_gradients``: eqs. (7)-(9) in one loop.

    Args:
        gains: factorization at the solution.
        C: (T, B, d, d) quadratic terms.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        tau: (T, B, d) the solution.
        grad_tau: (T, B, d) gradient of the loss with respect to tau.
        need_C, need_F, need_bounds: which of dC, dF and residual_u to form.
    """
    T, B, d = tau.shape
    n = F.shape[-2]
    m = d - n
    dtype = tau.dtype
    dtau = torch.empty(T, B, d, dtype=dtype)
    dlam = torch.empty(T, B, n, dtype=dtype)
    # what is not asked for is an empty array of the same rank (numba types by rank); dC
    # and dF are laid out batch first, the layout of the user's C and F, so that autograd
    # hands them on without copies
    dC = torch.empty((B, T, d, d) if need_C else (0, 0, 0, 0), dtype=dtype).transpose(0, 1)
    dF = torch.empty((B, T - 1, n, d) if need_F else (0, 0, 0, 0), dtype=dtype).transpose(0, 1)
    residual_u = torch.empty((T, B, m) if need_bounds else (0, 0, 0), dtype=dtype)
    arrays = [as_array(z) for z in (gains.K, gains.chol, gains.free, C, c, F, tau, grad_tau)]
    _implicit(
        *arrays,
        bool(need_C),
        bool(need_F),
        bool(need_bounds),
        dtau.numpy(),
        dlam.numpy(),
        dC.numpy(),
        dF.numpy(),
        residual_u.numpy(),
    )
    return ImplicitGradients(
        dtau,
        dlam,
        dC if need_C else None,
        dF if need_F else None,
        residual_u if need_bounds else None,
    )
