"""Compiled twins of the built-in dynamics and costs: one step, its Jacobian, its curvature.

Dynamics (one batch element b, one step t):

    kind 1, the pendulum family (``PendulumDynamics``, ``WindyPendulumDynamics``) on
    x = (cos th, sin th, w), u = (torque,), with th = atan2(sin th, cos th):
        w_ddot = A sin th + B cos th + D w + E u
        w'     = clip(w + dt w_ddot, -max_speed, max_speed),  th' = th + dt w'
        x'     = (cos th', sin th', w')
    with A = 3 g / (2 l), E = 3 / (m l^2), B = D = 0 for the pendulum, and inertia
    I = m l^2 / 3, B = -wind l / I, D = -damping / I, E = 1 / I for the windy pendulum.

The parameters are an array p (P, Bp) of the module's current values (Bp = 1 shared, or
Bp = B one per element) and the fixed constants c = (dt, max_speed) (inf: no clip).
Every function reads row t of whole trajectories x (T, n), u (T, m) (no array views in
the hot loop). ``step`` writes f(x_t, u_t) into x[t + 1], ``jacobian`` J = df/d[x; u]
(n, n+m) into F[t, 0], ``curvature`` adds sum_i lam_{t+1,i} d2 f_i / d[x; u]2 (n+m, n+m)
into C[t, 0]: the dynamics' part of the
Lagrangian's Hessian (Newton steps), the same as autograd's second derivatives of the torch
module (zero through an active clip).

Costs (per step t of element b, tau = [x; u]):

    kind 0, ``QuadraticCost``:    tau' (1/2 C tau + c), Hessian (C + C')/2, gradient
                                  (C + C')/2 tau + c; C (Bc, Tc, d, d), c (Bc', Tc', d)
                                  with each leading size 1 (shared) or B / T;
    kind 1, ``GoalWeightedCost``: sum_i w_i (tau_i - goal_i)^2 + linear' tau, Hessian
                                  diag(2 w), gradient 2 w (tau - goal) + linear;
                                  wgl (3, d) = (w, goal, linear).
"""

from __future__ import annotations

import math

from numba import njit

__all__ = [
    "COST_GOAL_WEIGHTED",
    "COST_QUADRATIC",
    "DYNAMICS_PENDULUM",
    "DYNAMICS_WINDY_PENDULUM",
    "cost_quadratize",
    "cost_value",
    "dynamics_curvature",
    "dynamics_jacobian",
    "dynamics_step",
]

COST_QUADRATIC, COST_GOAL_WEIGHTED = 0, 1
DYNAMICS_PENDULUM, DYNAMICS_WINDY_PENDULUM = 1, 2


@njit(cache=True, nogil=True, error_model="numpy")
def _pendulum_coefficients(kind, p, b):
    """(A, B, D, E) of w_ddot = A sin th + B cos th + D w + E u for element b."""
    j = b if p.shape[1] > 1 else 0
    g, mass, length = p[0, j], p[1, j], p[2, j]
    if kind == DYNAMICS_PENDULUM:
        return 1.5 * g / length, 0.0, 0.0, 3.0 / (mass * length * length)
    inertia = mass * length * length / 3.0
    return 1.5 * g / length, -p[4, j] * length / inertia, -p[3, j] / inertia, 1.0 / inertia


@njit(cache=True, nogil=True, error_model="numpy")
def _clip(w, limit):
    """w clipped to [-limit, limit] (NaN stays NaN), and whether it was inside."""
    if w > limit:
        return limit, False
    if w < -limit:
        return -limit, False
    return w, w == w


@njit(cache=True, nogil=True, error_model="numpy")
def dynamics_step(kind, p, c, b, x, u, t) -> None:
    """x[t + 1] = f(x[t], u[t]) of element b; x (T, n), u (T, m)."""
    A, Bc, D, E = _pendulum_coefficients(kind, p, b)
    dt = c[0]
    theta = math.atan2(x[t, 1], x[t, 0])
    accel = A * math.sin(theta) + Bc * math.cos(theta) + D * x[t, 2] + E * u[t, 0]
    w, _ = _clip(x[t, 2] + dt * accel, c[1])
    theta_next = theta + dt * w
    x[t + 1, 0] = math.cos(theta_next)
    x[t + 1, 1] = math.sin(theta_next)
    x[t + 1, 2] = w


@njit(cache=True, nogil=True, error_model="numpy")
def _partials(kind, p, c, b, x, u, t, w_row, th_row):
    """The rows d w' and d th' (d,) with respect to (cos, sin, w, u) at x[t], u[t]; returns
    (th, th', active, the angle's partials th_c, th_s, A, B)."""
    A, Bc, D, E = _pendulum_coefficients(kind, p, b)
    dt = c[0]
    cos, sin = x[t, 0], x[t, 1]
    radius2 = cos * cos + sin * sin
    th_c, th_s = -sin / radius2, cos / radius2
    theta = math.atan2(sin, cos)
    accel = A * math.sin(theta) + Bc * math.cos(theta) + D * x[t, 2] + E * u[t, 0]
    w, inside = _clip(x[t, 2] + dt * accel, c[1])
    active = 1.0 if inside else 0.0
    a_theta = A * math.cos(theta) - Bc * math.sin(theta)
    w_row[0] = active * dt * a_theta * th_c
    w_row[1] = active * dt * a_theta * th_s
    w_row[2] = active * (1.0 + dt * D)
    w_row[3] = active * dt * E
    th_row[0] = th_c + dt * w_row[0]
    th_row[1] = th_s + dt * w_row[1]
    th_row[2] = dt * w_row[2]
    th_row[3] = dt * w_row[3]
    return theta, theta + dt * w, active, th_c, th_s, A, Bc


@njit(cache=True, nogil=True, error_model="numpy")
def dynamics_jacobian(kind, p, c, b, x, u, t, F, w_row, th_row) -> None:
    """F[t, 0] (n, d) = df/d[x; u] at x[t], u[t] of element b; w_row, th_row (d,) scratch."""
    _, theta_next, _, _, _, _, _ = _partials(kind, p, c, b, x, u, t, w_row, th_row)
    cos_next, sin_next = math.cos(theta_next), math.sin(theta_next)
    for j in range(4):
        F[t, 0, 0, j] = -sin_next * th_row[j]
        F[t, 0, 1, j] = cos_next * th_row[j]
        F[t, 0, 2, j] = w_row[j]


@njit(cache=True, nogil=True, error_model="numpy")
def dynamics_curvature(kind, p, c, b, x, u, t, lam, C, w_row, th_row) -> None:
    """C[t, 0] (d, d) += sum_i lam[t + 1, i] d2 f_i / d[x; u]2 at x[t], u[t] of element b."""
    theta, theta_next, active, th_c, th_s, A, Bc = _partials(kind, p, c, b, x, u, t, w_row, th_row)
    dt = c[0]
    cos, sin = x[t, 0], x[t, 1]
    radius4 = (cos * cos + sin * sin) ** 2
    a_theta = A * math.cos(theta) - Bc * math.sin(theta)
    a_theta2 = -A * math.sin(theta) - Bc * math.cos(theta)
    cos_next, sin_next = math.cos(theta_next), math.sin(theta_next)
    l0, l1, l2 = lam[t + 1, 0], lam[t + 1, 1], lam[t + 1, 2]
    # second derivatives of th = atan2(sin, cos) in (cos, sin)
    th_cc = 2.0 * cos * sin / radius4
    th_cs = (sin * sin - cos * cos) / radius4
    for i in range(4):
        for j in range(4):
            w2 = 0.0
            th_next2 = 0.0
            if i < 2 and j < 2:
                th_ij = th_cs if i != j else (th_cc if i == 0 else -th_cc)
                th_i = th_c if i == 0 else th_s
                th_j = th_c if j == 0 else th_s
                w2 = active * dt * (a_theta2 * th_i * th_j + a_theta * th_ij)
                th_next2 = th_ij + dt * w2
            d2_cos = -cos_next * th_row[i] * th_row[j] - sin_next * th_next2
            d2_sin = -sin_next * th_row[i] * th_row[j] + cos_next * th_next2
            C[t, 0, i, j] += l0 * d2_cos + l1 * d2_sin + l2 * w2


@njit(cache=True, nogil=True, error_model="numpy")
def cost_value(kind, Cq, cq, wgl, b, x, u, t):
    """The cost of step t of element b at x[t], u[t]; x (T, n), u (T, m)."""
    n = x.shape[1]
    d = n + u.shape[1]
    total = 0.0
    if kind == COST_GOAL_WEIGHTED:
        linear = 0.0
        for i in range(d):
            tau_i = x[t, i] if i < n else u[t, i - n]
            error = tau_i - wgl[1, i]
            total += wgl[0, i] * error * error
            linear += wgl[2, i] * tau_i
        return total + linear
    bi, ti = b if Cq.shape[0] > 1 else 0, t if Cq.shape[1] > 1 else 0
    bj, tj = b if cq.shape[0] > 1 else 0, t if cq.shape[1] > 1 else 0
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += Cq[bi, ti, i, j] * (x[t, j] if j < n else u[t, j - n])
        total += (x[t, i] if i < n else u[t, i - n]) * (0.5 * s + cq[bj, tj, i])
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def cost_quadratize(kind, Cq, cq, wgl, b, x, u, t, C, g) -> None:
    """Hessian C[t, 0] (d, d) and gradient g[t, 0] (d,) of step t of element b."""
    n = x.shape[1]
    d = n + u.shape[1]
    if kind == COST_GOAL_WEIGHTED:
        for i in range(d):
            for j in range(d):
                C[t, 0, i, j] = 0.0
            C[t, 0, i, i] = 2.0 * wgl[0, i]
            tau_i = x[t, i] if i < n else u[t, i - n]
            g[t, 0, i] = 2.0 * wgl[0, i] * (tau_i - wgl[1, i]) + wgl[2, i]
        return
    bi, ti = b if Cq.shape[0] > 1 else 0, t if Cq.shape[1] > 1 else 0
    bj, tj = b if cq.shape[0] > 1 else 0, t if cq.shape[1] > 1 else 0
    for i in range(d):
        for j in range(d):
            C[t, 0, i, j] = 0.5 * (Cq[bi, ti, i, j] + Cq[bi, ti, j, i])
    for i in range(d):
        s = 0.0
        for j in range(d):
            s += C[t, 0, i, j] * (x[t, j] if j < n else u[t, j - n])
        g[t, 0, i] = s + cq[bj, tj, i]
