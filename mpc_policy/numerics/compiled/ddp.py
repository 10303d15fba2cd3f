"""The whole box-DDP solve of a nonlinear problem with a compiled model: one kernel call.

For dynamics and a cost with compiled twins (``models``), every phase of
``mpc_policy.solve.ddp.box_ddp`` runs inside one numba loop, one batch element after another:

    local model:   C_t, g_t = cost Hessian and gradient, F_t = dynamics Jacobian at tau_bar;
                   a Newton step adds sum_i lam_{t+1,i} d2 f_i (lam: costates of g, F);
    backward pass: the box-LQR recursion (``riccati._recursion_element``) with the box
                   [lower - u_bar, upper - u_bar];
    fixed point:   the full step on the linearized dynamics changes no control by more than
                   tol (1 + max |u_bar|) (eq. (11));
    Newton switch: residual <= newton_residual and the last contraction slow (more than
                   ``options.NEWTON_STEPS_LEFT`` steps to go), as box_ddp decides it;
    line search:   the first alpha in (1, decay, decay^2, ...) whose rolled-out cost is at
                   most cost_bar + ``options.COST_ROUNDING`` eps (1 + |cost_bar|); none refuses
                   a Newton step (Gauss-Newton from then on) or stalls a Gauss-Newton one;
    health:        non-finite trajectory, cost or local model (the dynamics first) freeze
                   the element as NONFINITE; a stopped element whose Q_uu is indefinite on
                   its free controls beyond the first shift is INDEFINITE (``health``).

The same decisions as box_ddp on the same data, each element on its own, in float64
arithmetic for every dtype (float32's conversions at every step cost twice the time) with the
problem dtype's tolerance and rounding threshold; the results are rounded to that dtype.
Shapes, time first: x (T, B, n), u (T, B, m), bounds (T, B, m); gains as ``riccati.Gains``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mpc_policy.numerics.compiled._arrays import as_array, as_strided
from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled._linalg import clamp, store_element
from mpc_policy.numerics.compiled.ddp_steps import (
    _add_curvature,
    _finite,
    _indefinite,
    _local_model,
    _nonfinite_source,
    _residual,
    _rollout,
)
from mpc_policy.numerics.compiled.riccati import _recursion_element, recursion_scratch
from mpc_policy.options import COST_ROUNDING, NEWTON_STEPS_LEFT, MPCOptions
from mpc_policy.solution import SOURCE_COST, SOURCE_DYNAMICS, Status

__all__ = ["CompiledDDPResult", "Twins", "solve_ddp"]

_CONVERGED, _MAX_ITER, _STALLED = int(Status.CONVERGED), int(Status.MAX_ITER), int(Status.STALLED)
_NONFINITE, _INDEFINITE = int(Status.NONFINITE), int(Status.INDEFINITE)


class Twins(NamedTuple):
    """The compiled twins of a problem's modules, with their current parameter values.

    Attributes:
        dynamics_kind: a ``models.DYNAMICS_*`` code.
        dynamics_params: (P, Bp) the module's parameters (Bp = 1 shared, or B).
        dynamics_constants: (dt, max_speed), float64.
        cost_kind: a ``models.COST_*`` code.
        C: (Bc, Tc, d, d) a quadratic cost's terms (Bc, Tc in {1, B} and {1, T}).
        c: (Bc, Tc, d) its linear terms.
        wgl: (3, d) a goal-weighted cost's weights, goal and linear term.
        dynamics_code: (3,) int64, a traced model's function addresses (else zeros).
        dynamics_work: (W,) float64, a traced model's scratch (else any size).
    """

    dynamics_kind: int
    dynamics_params: np.ndarray
    dynamics_constants: np.ndarray
    cost_kind: int
    C: np.ndarray
    c: np.ndarray
    wgl: np.ndarray
    dynamics_code: np.ndarray
    dynamics_work: np.ndarray


# the per-iteration kernels allocate nothing: _nrt=False spares them the reference counting
# of every array argument and view (riccati.py); _solve allocates and keeps it
@kernel(nogil=True)
def _solve(
    tw,
    x_init,
    lower,
    upper,
    bounded,
    alphas,
    constants,
    settings,
    x_out,
    u_out,
    cost_out,
    K_out,
    k_out,
    free_out,
    chol_out,
    Q_out,
    shift_out,
    iterations,
    status,
    residual_out,
    step_out,
    source_out,
) -> None:
    T, B, n = x_out.shape
    m = u_out.shape[2]
    d = n + m
    dtype = x_out.dtype
    # the element's arrays, (T, 1, ...) for the recursion
    model = (
        np.empty((T, 1, d, d), dtype=dtype),  # C
        np.empty((T, 1, d), dtype=dtype),  # g
        np.zeros((max(T - 1, 0), 1, n, d), dtype=dtype),  # F
    )
    gains = (
        np.zeros((T, 1, m, n), dtype=dtype),  # K
        np.zeros((T, 1, m), dtype=dtype),  # k
        np.ones((T, 1, m), dtype=np.bool_),  # free
        np.zeros((T, 1, m, m), dtype=dtype),  # chol
        np.zeros((T, 1, d, d), dtype=dtype),  # Q
        np.zeros((T, 1), dtype=dtype),  # shift
    )
    trajectories = (
        np.empty((T, n), dtype=dtype),  # x_bar
        np.empty((T, m), dtype=dtype),  # u_bar
        np.empty((T, n), dtype=dtype),  # x_try
        np.empty((T, m), dtype=dtype),  # u_try
        np.empty((T, n), dtype=dtype),  # lam
    )
    work = (
        np.empty((T, 1, m), dtype=dtype),  # du_lower
        np.empty((T, 1, m), dtype=dtype),  # du_upper
        recursion_scratch(n, m, dtype),
        np.empty((2, n), dtype=dtype),  # dx
        np.empty(m, dtype=dtype),  # du
        np.empty(d, dtype=dtype),  # w_row
        np.empty(d, dtype=dtype),  # th_row
        np.empty(2, dtype=dtype),  # costs and thresholds in the problem's dtype
    )
    problem = (tw, x_init, lower, upper, bounded, alphas, constants, settings)
    arrays = (model, gains, trajectories, work)
    outputs = (x_out, u_out, cost_out, iterations, status, residual_out, step_out, source_out)
    gains_out = (K_out, k_out, free_out, chol_out, Q_out, shift_out)
    for b in range(B):
        _solve_element(b, problem, arrays, outputs, gains_out, n, m)


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _solve_element(b, problem, arrays, outputs, gains_out, n, m) -> None:
    """``_solve``'s loop body: the solve of element b, n states and m controls. Copies are
    element loops: a slice assignment compiles numba's shape-mismatch reporting."""
    tw, x_init, lower, upper, bounded, alphas, constants, settings = problem
    (C, g, F), (K, k, free, chol, Q, shift), trajectories, work = arrays
    x_bar, u_bar, x_try, u_try, lam = trajectories
    du_lower, du_upper, scratch, dx, du, w_row, th_row, rounded = work
    x_out, u_out, cost_out, iterations, status, residual_out, step_out, source_out = outputs
    T = x_bar.shape[0]
    tol, rounding, regularization, qp_tol = constants[0], constants[1], constants[2], constants[3]
    newton_residual, newton_steps_left = constants[4], constants[5]
    max_iter, qp_max_iter, curvature_on = settings[0], settings[1], settings[2] != 0
    # typed values, not literals: numba compiles a callee once more for each literal argument
    # (False and True, the element 0), where these share the bounded-LQR solve's compilation
    no, yes, element = np.bool_(False), np.bool_(True), np.int64(0)
    for t in range(T):
        for i in range(m):
            u_bar[t, i] = clamp(u_out[t, b, i], lower[t, b, i], upper[t, b, i])
    rounded[0] = _rollout(
        tw, b, x_init, x_bar, u_bar, K, k, 0.0, no, lower, upper, x_try, u_try, n, m
    )
    _copy(x_try, x_bar)
    cost_bar = rounded[0]
    source = 0
    if not _finite(x_bar):
        source = SOURCE_DYNAMICS
    elif not math.isfinite(cost_bar):
        source = SOURCE_COST
    converged = stalled = newton = gauss_newton = stepping = False
    count = 0
    step_size = 0.0
    residual = math.inf
    last_residual = math.inf
    while source == 0:
        _local_model(tw, b, x_bar, u_bar, C, g, F, w_row, th_row, n, m)
        source = _nonfinite_source(C, g, F)
        if source != 0:
            break
        for t in range(T):
            for i in range(m):
                du_lower[t, 0, i] = lower[t, b, i] - u_bar[t, i]
                du_upper[t, 0, i] = upper[t, b, i] - u_bar[t, i]
        stepping = curvature_on and newton and not gauss_newton
        if stepping:
            _add_curvature(tw, b, x_bar, u_bar, g, F, C, lam, w_row, th_row)
        # the pendulum family's sizes as compiled-in constants in the recursion: its loops
        # of known length over n and m run 2-3x faster than over sizes read at run time (B =
        # 256 float32: 12.4 ms a solve without, 8.7 ms with); the same code, and every other
        # size runs it unspecialized. The rest of the element solve, specialized too, gained
        # nothing measurable and cost 1.5-2 s of compilation
        if n == 3 and m == 1:
            _recursion_element(
                C, g, F, du_lower, du_upper, bounded, element, regularization, qp_max_iter,
                qp_tol, K, k, free, chol, Q, shift, scratch, 3, 1,
            )  # fmt: skip
        else:
            _recursion_element(
                C, g, F, du_lower, du_upper, bounded, element, regularization, qp_max_iter,
                qp_tol, K, k, free, chol, Q, shift, scratch, n, m,
            )  # fmt: skip
        # the fixed-point test on the full step of the convex approximation (eq. (11))
        residual = _residual(b, F, u_bar, K, k, lower, upper, dx, du, n, m)
        converged = residual <= tol
        if curvature_on:
            rate = residual / last_residual
            steps = np.log(tol / residual) / np.log(rate)
            slow = rate >= 1.0 or steps > newton_steps_left
            newton = residual <= newton_residual and not gauss_newton and (newton or slow)
            last_residual = residual
        if converged or count >= max_iter:
            break
        count += 1
        rounded[1] = cost_bar + rounding * (1.0 + abs(cost_bar))
        accepted = False
        for a in range(alphas.shape[0]):
            rounded[0] = _rollout(
                tw, b, x_init, x_bar, u_bar, K, k, alphas[a], yes, lower, upper, x_try, u_try,
                n, m,
            )  # fmt: skip
            if rounded[0] <= rounded[1]:
                _copy(x_try, x_bar)
                _copy(u_try, u_bar)
                cost_bar = rounded[0]
                step_size = alphas[a]
                accepted = True
                break
        if not accepted:
            step_size = 0.0
            if stepping:
                gauss_newton = True  # a refused Newton step: Gauss-Newton from here on
            else:
                stalled = True
                break
    indefinite = source == 0 and not stalled
    if indefinite:  # n read from F: a cold path, compiled once for every size
        indefinite = _indefinite(C, F, K, free, regularization, F.shape[2])
    if source != 0:
        status[b] = _NONFINITE
        residual = math.nan
        # no gains of use (and none of the last element's): no feedback, all free
        for t in range(T):
            shift[t, 0] = 0.0
            for i in range(m):
                k[t, 0, i] = 0.0
                free[t, 0, i] = True
                for j in range(n):
                    K[t, 0, i, j] = 0.0
    elif indefinite:
        status[b] = _INDEFINITE
    elif converged:
        status[b] = _CONVERGED
    elif stalled:
        status[b] = _STALLED
    else:
        status[b] = _MAX_ITER
    iterations[b] = count
    residual_out[b] = residual
    step_out[b] = step_size
    source_out[b] = source
    cost_out[b] = cost_bar
    store_element(x_bar, x_out, b)
    store_element(u_bar, u_out, b)
    _store_gains((K, k, free, chol, Q, shift), gains_out, b)


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _copy(source, target) -> None:
    """target (T, k) = source (T, k), element by element."""
    for t in range(source.shape[0]):
        for i in range(source.shape[1]):
            target[t, i] = source[t, i]


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _store_gains(gains, gains_out, b) -> None:
    """Element b's gains (T, 1, ...) into the batch's (T, B, ...), element by element."""
    K, k, free, chol, Q, shift = gains
    K_out, k_out, free_out, chol_out, Q_out, shift_out = gains_out
    T, _, m, n = K.shape
    d = Q.shape[2]
    for t in range(T):
        shift_out[t, b] = shift[t, 0]
        for i in range(m):
            k_out[t, b, i] = k[t, 0, i]
            free_out[t, b, i] = free[t, 0, i]
            for j in range(n):
                K_out[t, b, i, j] = K[t, 0, i, j]
            for j in range(m):
                chol_out[t, b, i, j] = chol[t, 0, i, j]
        for i in range(d):
            for j in range(d):
                Q_out[t, b, i, j] = Q[t, 0, i, j]


class CompiledDDPResult(NamedTuple):
    """Outcome of ``solve_ddp`` as the kernel wrote it: float64 arrays, time first;
    per-element reports (B,)."""

    x: np.ndarray
    u: np.ndarray
    cost: np.ndarray
    gains: tuple[np.ndarray, ...]
    iterations: np.ndarray
    status: np.ndarray
    residual: np.ndarray
    step_size: np.ndarray
    source: np.ndarray


def _settings(options: MPCOptions, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """``_made_settings`` looked up by the options' identity first (hashing the frozen
    options, every field, costs more than the kernel's dispatch); the entry keeps the options
    alive, so an identity is never reused while it is cached."""
    entry = _settings_by_identity.get((id(options), dtype))
    if entry is None or entry[0] is not options:
        if len(_settings_by_identity) > 64:
            _settings_by_identity.clear()
        entry = _settings_by_identity[(id(options), dtype)] = (
            options,
            _made_settings(options, dtype),
        )
    return entry[1]


_settings_by_identity: dict[tuple[int, torch.dtype], tuple[MPCOptions, tuple[np.ndarray, ...]]] = {}


@functools.cache
def _made_settings(options: MPCOptions, dtype: torch.dtype) -> tuple[np.ndarray, ...]:
    """The step sizes (as box_ddp forms them, in the problem's dtype), the float constants
    and the integer settings of a solve, made once per (options, dtype); the kernel only
    reads them."""
    eps = torch.finfo(dtype).eps
    curvature = options.newton_residual > 0 and options.jacobian != "finite_diff"
    exponents = torch.arange(options.max_line_search, dtype=dtype).numpy()
    alphas = (options.line_search_decay**exponents).astype(np.float64)
    constants = np.array(
        [
            options.tolerance(dtype),
            COST_ROUNDING * eps,
            options.regularization,
            eps**0.5,
            options.newton_residual,
            NEWTON_STEPS_LEFT,
        ]
    )
    settings = np.array([options.max_iter, options.qp_max_iter, int(curvature)], dtype=np.int64)
    return alphas, constants, settings


def solve_ddp(
    twins: Twins,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    options: MPCOptions,
) -> CompiledDDPResult:
    """Box-DDP on a batch of problems with compiled twins, as ``box_ddp`` would run it.

    Args:
        twins: the compiled cost and dynamics with their parameters.
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial controls (projected onto the box here).
        lower: (T, B, m) control lower bounds, or None (unbounded).
        upper: (T, B, m) control upper bounds, or None.
        options: the solve's options (iterations, tolerance, line search, Newton steps).

    Returns:
        The trajectory, its cost, the gains of the last backward pass (``riccati.Gains``'s
        fields) and the per-element iterations, ``Status`` codes, residuals, last step sizes
        and non-finite sources: numpy arrays, float64 for every dtype (the caller rounds them
        to the problem's dtype as it wraps them).
    """
    T, B, m = u_init.shape
    dtype = x_init.dtype
    # numpy arrays wrapped as tensors after the call: no tensor operation per output
    # float64 arithmetic for every dtype (float32's rounds at each step cost latency): the
    # tolerance and the cost's rounding threshold stay the problem dtype's
    real = np.float64
    u = np.array(as_strided(u_init), real, order="C")  # a copy: the kernel writes the solution
    bounded = lower is not None and upper is not None
    # one C-ordered numpy copy of the (often transposed, expanded) controls and bounds
    lo = (
        np.full((T, B, m), -np.inf)
        if lower is None
        else np.array(as_strided(lower), real, order="C")
    )
    hi = (
        np.full((T, B, m), np.inf)
        if upper is None
        else np.array(as_strided(upper), real, order="C")
    )
    n = x_init.shape[1]
    d = n + m
    x = np.empty((T, B, n), dtype=real)
    cost = np.empty(B, dtype=real)
    gains = (
        np.empty((T, B, m, n), dtype=real),
        np.empty((T, B, m), dtype=real),
        np.empty((T, B, m), dtype=np.bool_),
        np.empty((T, B, m, m), dtype=real),
        np.empty((T, B, d, d), dtype=real),
        np.empty((T, B), dtype=real),
    )
    iterations = np.empty(B, dtype=np.int64)
    status = np.empty(B, dtype=np.int8)
    residual = np.empty(B, dtype=real)
    step_size = np.empty(B, dtype=real)
    source = np.empty(B, dtype=np.int8)
    alphas, constants, settings = _settings(options, dtype)
    _solve(
        tuple(twins),
        as_array(x_init).astype(real),
        lo,
        hi,
        bounded,
        alphas,
        constants,
        settings,
        x,
        u,
        cost,
        *gains,
        iterations,
        status,
        residual,
        step_size,
        source,
    )
    return CompiledDDPResult(x, u, cost, gains, iterations, status, residual, step_size, source)
