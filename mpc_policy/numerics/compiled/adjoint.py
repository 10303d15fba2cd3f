"""The implicit backward pass of box LQR, compiled: the kernels of ``mpc_policy.numerics.adjoint``.

``adjoint_solve`` is the backward LQR of eq. (9) (c = dL/dtau, f = 0, x_init = 0, clamped
controls fixed at 0) with the forward pass's gains and Cholesky factors, and
``costates_from_gradient`` the costates of eq. (7). Same signatures and results as the torch
functions; CPU tensors only. Shapes are time first: F (T-1, B, n, d), tau (T, B, d).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.adjoint import ImplicitGradients
from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import smaller, store_element
from mpc_policy.numerics.riccati import Gains

__all__ = ["adjoint_solve", "costates_from_gradient", "implicit_gradients"]


# elements are solved in groups of _LANES, their independent recursions interleaved step by
# step: one element's recursion is a chain of dependent small products (latency bound), a
# group's keep the core busy
_LANES = 8
_FASTMATH = {"reassoc", "contract"}


@kernel(nogil=True, fastmath=_FASTMATH, inline="always")
def _back_step(K, chol, free, F, grad_tau, t, b, q, v, k) -> None:
    """Step t of eq. (9)'s backward recursion for element b: k[t] (m,) from v (n,) of
    step t + 1, then v of step t; q (d,) is scratch. Sums stay in the arrays' dtype and
    products with a transposed matrix run along its rows."""
    T, _, d = grad_tau.shape
    n = K.shape[3]
    m = d - n
    for i in range(d):
        q[i] = grad_tau[t, b, i]
    if t < T - 1:  # q += F_t' v
        for p in range(n):
            vp = v[p]
            for i in range(d):
                q[i] += F[t, b, p, i] * vp
    # k_t = -Q_ff^{-1} q_u on the free set (the forward factor), 0 on the clamped set
    for i in range(m):
        s = q[n + i] if free[t, b, i] else q[n + i] * 0
        for p in range(i):
            s -= chol[t, b, i, p] * k[t, p]
        k[t, i] = s / chol[t, b, i, i]
    for i in range(m - 1, -1, -1):
        s = k[t, i]
        for p in range(i + 1, m):
            s -= chol[t, b, p, i] * k[t, p]
        k[t, i] = s / chol[t, b, i, i]
    for i in range(m):
        k[t, i] = -k[t, i] if free[t, b, i] else k[t, i] * 0
    # clamped rows of K and k vanish, so v = q_x + K' q_u
    for i in range(n):
        v[i] = q[i]
    for p in range(m):
        qp = q[n + p]
        for i in range(n):
            v[i] += K[t, b, p, i] * qp


@kernel(nogil=True, fastmath=_FASTMATH, inline="always")
def _forward_step(K, F, t, b, k, out) -> None:
    """Step t of eq. (9)'s forward pass for element b: u_t = k_t + K_t x_t and
    x_{t+1} = F_t tau_t into out (T, d) (x_1 = 0 set by the caller)."""
    T, _, m, n = K.shape
    d = n + m
    for i in range(m):
        s = k[t, i]
        for j in range(n):
            s += K[t, b, i, j] * out[t, j]
        out[t, n + i] = s
    if t < T - 1:
        for i in range(n):
            s = F[t, b, i, 0] * out[t, 0]
            for j in range(1, d):
                s += F[t, b, i, j] * out[t, j]
            out[t + 1, i] = s


@kernel(nogil=True, fastmath=_FASTMATH, inline="always")
def _costate_step(C, offset, F, t, b, point, lam, stationarity) -> None:
    """Step t of the costates (eq. (7)) of element b for the gradient C_t point_t +
    offset_t: stationarity[t] (d,) receives that gradient, lam[t] (n,) the costate
    (lam[t + 1] already set)."""
    T, d = point.shape
    n = lam.shape[1]
    for i in range(d):
        s = offset[t, b, i]
        for j in range(d):
            s += C[t, b, i, j] * point[t, j]
        stationarity[t, i] = s
    for i in range(n):
        lam[t, i] = stationarity[t, i]
    if t < T - 1:  # lam_t += F_t' lam_{t+1}, on the state rows
        for p in range(n):
            lp = lam[t + 1, p]
            for i in range(n):
                lam[t, i] += F[t, b, p, i] * lp


@kernel(nogil=True, fastmath=_FASTMATH, no_cpython_wrapper=True)
def _adjoint_group(K, chol, free, F, grad_tau, b0, lanes, q, v, k, out) -> None:
    """Eq. (9) for the elements b0 .. b0 + lanes - 1 into out (lanes, T, d), their
    recursions interleaved step by step; q (W, d), v (W, n), k (W, T, m) are scratch."""
    T = grad_tau.shape[0]
    n = K.shape[3]
    for t in range(T - 1, -1, -1):
        for w in range(lanes):
            _back_step(K, chol, free, F, grad_tau, t, b0 + w, q[w], v[w], k[w])
    out[:, 0, :n] = 0.0
    for t in range(T):
        for w in range(lanes):
            _forward_step(K, F, t, b0 + w, k[w], out[w])


@kernel(nogil=True, fastmath=_FASTMATH, loop_vectorize=True)
def _adjoint(K, chol, free, F, grad_tau, dtau) -> None:
    T, B, d = grad_tau.shape
    n = K.shape[3]
    dtype = grad_tau.dtype
    out = np.empty((_LANES, T, d), dtype=dtype)
    q = np.empty((_LANES, d), dtype=dtype)
    v = np.empty((_LANES, n), dtype=dtype)
    k = np.empty((_LANES, T, d - n), dtype=dtype)
    for b0 in range(0, B, _LANES):
        lanes = smaller(_LANES, B - b0)
        _adjoint_group(K, chol, free, F, grad_tau, b0, lanes, q, v, k, out)
        for w in range(lanes):
            store_element(out[w], dtau, b0 + w)


def adjoint_solve(gains: Gains, F: Tensor, grad_tau: Tensor) -> Tensor:
    """Compiled ``mpc_policy.numerics.adjoint.adjoint_solve``.

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


@kernel(nogil=True, fastmath={"reassoc", "contract"})
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
    """Compiled ``mpc_policy.numerics.adjoint.costates_from_gradient``.

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


@kernel(nogil=True, fastmath=_FASTMATH, loop_vectorize=True)
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
    """Eqs. (7)-(9), a group of elements at a time; dC (B, T, d, d) and dF
    (B, T-1, n, d) are batch first."""
    T, B, d = tau.shape
    n = dlam.shape[2]
    m = d - n
    dtype = tau.dtype
    W = _LANES
    lam = np.empty((W, T, n), dtype=dtype)
    dlam_b = np.empty((W, T, n), dtype=dtype)
    stationarity = np.empty((W, T, d), dtype=dtype)
    scratch = np.empty((W, T, d), dtype=dtype)
    dtau_b = np.empty((W, T, d), dtype=dtype)
    tau_b = np.empty((W, T, d), dtype=dtype)
    q = np.empty((W, d), dtype=dtype)
    v = np.empty((W, n), dtype=dtype)
    k = np.empty((W, T, m), dtype=dtype)
    for b0 in range(0, B, W):
        lanes = smaller(W, B - b0)
        _adjoint_group(K, chol, free, F, grad_tau, b0, lanes, q, v, k, dtau_b)  # eq. (9)
        for t in range(T - 1, -1, -1):  # the costates of dL/dtau (eq. (7))
            for w in range(lanes):
                _costate_step(C, grad_tau, F, t, b0 + w, dtau_b[w], dlam_b[w], stationarity[w])
        if need_C or need_F:
            for w in range(lanes):
                for t in range(T):
                    for i in range(d):
                        tau_b[w, t, i] = tau[t, b0 + w, i]
        if need_F:  # the costates of the solution (eq. (7))
            for t in range(T - 1, -1, -1):
                for w in range(lanes):
                    _costate_step(C, c, F, t, b0 + w, tau_b[w], lam[w], scratch[w])
        for w in range(lanes):
            b = b0 + w
            store_element(dtau_b[w], dtau, b)
            store_element(dlam_b[w], dlam, b)
            if need_bounds:
                for t in range(T):
                    for i in range(m):
                        residual_u[t, b, i] = stationarity[w, t, n + i]
                    if t < T - 1:
                        for p in range(n):
                            lp = dlam_b[w, t + 1, p]
                            for i in range(m):
                                residual_u[t, b, i] += F[t, b, p, n + i] * lp
            if need_C:  # eq. (8)
                for t in range(T):
                    for i in range(d):
                        a = 0.5 * dtau_b[w, t, i]
                        e = 0.5 * tau_b[w, t, i]
                        for j in range(d):
                            dC[b, t, i, j] = a * tau_b[w, t, j] + e * dtau_b[w, t, j]
            if need_F:
                for t in range(T - 1):
                    for i in range(n):
                        a = dlam_b[w, t + 1, i]
                        e = lam[w, t + 1, i]
                        for j in range(d):
                            dF[b, t, i, j] = a * tau_b[w, t, j] + e * dtau_b[w, t, j]


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
    """Compiled ``mpc_policy.numerics.adjoint.implicit_gradients``: eqs. (7)-(9) in one loop.

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
    dC = torch.empty((B, T, d, d) if need_C else (0, 0, 0, 0), dtype=dtype)
    dF = torch.empty((B, T - 1, n, d) if need_F else (0, 0, 0, 0), dtype=dtype)
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
        dC.transpose(0, 1) if need_C else None,
        dF.transpose(0, 1) if need_F else None,
        residual_u if need_bounds else None,
    )
