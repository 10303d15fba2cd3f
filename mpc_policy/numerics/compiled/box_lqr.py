"""The whole box-DDP solve of a bounded LQR problem, compiled: one kernel call per solve.

For an LQR problem, cost sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t and dynamics
x_{t+1} = F_t tau_t + f_t, every step of ``mpc_policy.solve.ddp.box_ddp`` is known numerics (no
user code is called), so the loop itself runs compiled, one batch element after another:

    g_t = C_t tau_bar_t + c_t;  the box-LQR recursion on (C, g, F) with the box
    [lower - u_bar, upper - u_bar]  (``riccati._recursion_element``);
    the full step decides the fixed point: max |u_full - u_bar| <= tol (1 + max |u_bar|);
    otherwise the largest step size in (1, decay, decay^2, ...) whose cost does not exceed
    cost_bar + 10 eps (1 + |cost_bar|) is taken, and an element with none stalls.

The same decisions as ``box_ddp`` on the same data, compared in the problem's dtype. An
element whose initial trajectory is not finite is only flagged: the caller then runs the
torch loop, which owns the reporting of non-finite elements. Shapes are time first:
C (T, B, d, d), c (T, B, d), F (T-1, B, n, d), f (T-1, B, n), bounds (T, B, m).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import larger, store_element
from mpc_policy.numerics.compiled.riccati import _recursion_element, recursion_scratch
from mpc_policy.numerics.compiled.rollout import rollout_element
from mpc_policy.numerics.riccati import Gains
from mpc_policy.options import MPCOptions

__all__ = ["BoxLQRResult", "solve_box_lqr"]


@kernel(nogil=True, no_cpython_wrapper=True)
def _cost(b, C, c, x, u, half):
    """Element b's cost sum_t tau_t' (1/2 C_t tau_t + c_t), in the problem's dtype."""
    T, n = x.shape
    d = c.shape[2]
    total = c[0, 0, 0] * 0
    for t in range(T):
        for i in range(d):
            tau_i = x[t, i] if i < n else u[t, i - n]
            s = c[0, 0, 0] * 0
            for j in range(d):
                tau_j = x[t, j] if j < n else u[t, j - n]
                s += C[t, b, i, j] * tau_j
            total += tau_i * (half * s + c[t, b, i])
    return total


@kernel(nogil=True)
def _solve(
    C,
    c,
    F,
    f,
    x_init,
    lower,
    upper,
    alphas,
    constants,
    max_iter,
    regularization,
    qp_max_iter,
    qp_tol,
    x_bar,
    u_bar,
    cost_bar,
    K,
    k,
    free,
    chol,
    Q,
    shift,
    g,
    du_lower,
    du_upper,
    pass_shift,
    iterations,
    converged,
    stalled,
    finite,
    residual,
    step_size,
) -> None:
    T, B, d = c.shape
    n = x_init.shape[1]
    m = d - n
    dtype = c.dtype
    half, one, tol, rounding = constants[0], constants[1], constants[2], constants[3]
    scratch = recursion_scratch(n, m, dtype)
    x_try = np.empty((T, n), dtype=dtype)
    u_try = np.empty((T, m), dtype=dtype)
    # the flags as run-time booleans: a literal True or False would compile each callee
    # once more, for that literal (the branches fold all the same)
    yes, no = np.bool_(True), np.bool_(False)
    for b in range(B):
        # the initial trajectory: u_bar (clamped by the caller) rolled out
        rollout_element(
            b, F, f, x_init, u_bar, x_bar, K, k, one, no, yes, lower, upper, x_try, u_try
        )
        store_element(x_try, x_bar, b)
        cost_bar[b] = _cost(b, C, c, x_try, u_try, half)
        finite[b] = math.isfinite(cost_bar[b])
        for t in range(T):
            for i in range(n):
                finite[b] = finite[b] and math.isfinite(x_try[t, i])
        if not finite[b]:
            continue
        for _ in range(max_iter + 1):
            for t in range(T):
                for i in range(d):
                    s = c[t, b, i] * 0
                    for j in range(d):
                        s += C[t, b, i, j] * (x_bar[t, b, j] if j < n else u_bar[t, b, j - n])
                    g[t, b, i] = s + c[t, b, i]
                for i in range(m):
                    du_lower[t, b, i] = lower[t, b, i] - u_bar[t, b, i]
                    du_upper[t, b, i] = upper[t, b, i] - u_bar[t, b, i]
            _recursion_element(
                C, g, F, du_lower, du_upper, yes, b, regularization, qp_max_iter, qp_tol,
                K, k, free, chol, Q, pass_shift, scratch, n, m,
            )  # fmt: skip
            for t in range(T):
                shift[t, b] = larger(shift[t, b], pass_shift[t, b])
            # the full step decides the fixed point (eq. (11))
            rollout_element(
                b, F, f, x_init, u_bar, x_bar, K, k, one, yes, yes, lower, upper, x_try, u_try
            )
            change = u_bar[0, b, 0] * 0
            size = u_bar[0, b, 0] * 0
            for t in range(T):
                for i in range(m):
                    change = larger(change, abs(u_try[t, i] - u_bar[t, b, i]))
                    size = larger(size, abs(u_bar[t, b, i]))
            residual[b] = change / (one + size)
            converged[b] = residual[b] <= tol
            if converged[b] or iterations[b] >= max_iter:
                break
            iterations[b] += 1
            threshold = cost_bar[b] + rounding * (one + abs(cost_bar[b]))
            taken = False
            for a in range(alphas.shape[0]):
                if a > 0:
                    rollout_element(
                        b, F, f, x_init, u_bar, x_bar, K, k, alphas[a], yes, yes, lower,
                        upper, x_try, u_try,
                    )  # fmt: skip
                cost = _cost(b, C, c, x_try, u_try, half)
                if cost <= threshold:
                    store_element(x_try, x_bar, b)
                    store_element(u_try, u_bar, b)
                    cost_bar[b] = cost
                    step_size[b] = alphas[a]
                    taken = True
                    break
            if not taken:
                # no step size decreases the cost: this element is stuck where it is
                stalled[b] = True
                step_size[b] = 0.0
                break


class BoxLQRResult(NamedTuple):
    """Outcome of ``solve_box_lqr``, time first; per-element reports of shape (B,)."""

    x: Tensor
    u: Tensor
    cost: Tensor
    gains: Gains
    shift: Tensor
    iterations: Tensor
    converged: Tensor
    stalled: Tensor
    finite: Tensor
    residual: Tensor
    step_size: Tensor


def solve_box_lqr(
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor,
    upper: Tensor,
    alphas: Tensor,
    options: MPCOptions,
) -> BoxLQRResult:
    """Box-DDP on a batch of bounded LQR problems, as ``box_ddp`` would run it.

    Args:
        C: (T, B, d, d) symmetric quadratic terms.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        f: (T-1, B, n) dynamics offsets.
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial controls, inside the bounds.
        lower: (T, B, m) control lower bounds (-inf where unbounded).
        upper: (T, B, m) control upper bounds (inf where unbounded).
        alphas: (L,) line-search step sizes, largest first.
        options: the solve's options.

    Returns:
        The trajectory, its cost and the gains of the last backward pass (those of
        ``box_ddp``), the largest regularization shift (T, B) each step needed, and the
        per-element reports.
    """
    T, B, d = c.shape
    n = x_init.shape[1]
    m = d - n
    dtype = c.dtype
    eps = torch.finfo(dtype).eps
    x = torch.empty(T, B, n, dtype=dtype)
    u = u_init.detach().clone(memory_format=torch.contiguous_format)
    cost = torch.empty(B, dtype=dtype)
    gains = Gains(
        torch.zeros(T, B, m, n, dtype=dtype),
        torch.zeros(T, B, m, dtype=dtype),
        torch.ones(T, B, m, dtype=torch.bool),
        torch.zeros(T, B, m, m, dtype=dtype),
        torch.zeros(T, B, d, d, dtype=dtype),
        torch.zeros(T, B, dtype=dtype),  # the last backward pass's shifts
    )
    shift = torch.zeros(T, B, dtype=dtype)
    iterations = torch.zeros(B, dtype=torch.long)
    converged = torch.zeros(B, dtype=torch.bool)
    stalled = torch.zeros(B, dtype=torch.bool)
    finite = torch.zeros(B, dtype=torch.bool)
    residual = torch.full((B,), float("inf"), dtype=dtype)
    step_size = torch.zeros(B, dtype=dtype)
    tol = options.tolerance(dtype)
    rounding = options.cost_rounding(dtype)  # the acceptance rule of every box-DDP loop
    constants = np.array([0.5, 1.0, tol, rounding], dtype=as_array(c).dtype)
    _solve(
        *(as_array(z) for z in (C, c, F, f, x_init, lower, upper, alphas)),
        constants,
        int(options.max_iter),
        float(options.regularization),
        int(options.qp_max_iter),
        float(eps**0.5),
        x.numpy(),
        u.numpy(),
        cost.numpy(),
        *(z.numpy() for z in gains[:5]),
        shift.numpy(),
        np.empty((T, B, d), dtype=constants.dtype),
        np.empty((T, B, m), dtype=constants.dtype),
        np.empty((T, B, m), dtype=constants.dtype),
        gains.shift.numpy(),
        iterations.numpy(),
        converged.numpy(),
        stalled.numpy(),
        finite.numpy(),
        residual.numpy(),
        step_size.numpy(),
    )
    return BoxLQRResult(
        x, u, cost, gains, shift, iterations, converged, stalled, finite, residual, step_size
    )
