"""Compiled twins of the built-in dynamics and costs: one step, its Jacobian, its curvature.

Dynamics (one batch element b, one step t):

    kind 1, the pendulum family (``PendulumDynamics``, ``WindyPendulumDynamics``) on
    x = (cos th, sin th, w), u = (torque,), with th = atan2(sin th, cos th):
        w_ddot = A sin th + B cos th + D w + E u
        w'     = clip(w + dt w_ddot, -max_speed, max_speed),  th' = th + dt w'
        x'     = (cos th', sin th', w')
    with A = 3 g / (2 l), E = 3 / (m l^2), B = D = 0 for the pendulum, and inertia
    I = m l^2 / 3, B = -wind l / I, D = -damping / I, E = 1 / I for the windy pendulum.
    Computed without atan2: (cos th, sin th) = (cos, sin) / |(cos, sin)| and
    cos th' = cos th cos(dt w') - sin th sin(dt w') (sin th' likewise), one sincos a step
    instead of atan2 and two; equal to the torch module up to rounding (about 1e-15).

    kind 3, the cart-pole (``CartPoleDynamics``) on x = (p, v, cos th, sin th, w), u = (force,)
    with parameters (g, m_c, m_p, l), M = m_c + m_p, k = m_p l / M:
        a = u / M + k w^2 sin th,   w_dot = (g sin th - a cos th) / (4 l / 3 - k cos^2 th),
        v_dot = a - k w_dot cos th,
        x' = (p + dt v, v + dt v_dot, cos th', sin th', w + dt w_dot),  th' = th + dt w;
    its derivatives are taken in y = (th, w, u) and carried to x through th(cos, sin).

The parameters are an array p (P, Bp) of the module's current values (Bp = 1 shared, or
Bp = B one per element) and the fixed constants c = (dt, max_speed) (inf: no clip).
Every function reads row t of whole trajectories x (T, n), u (T, m) (no array views in
the hot loop). Kind 4 is a traced module (``traced``, ``codegen``): its generated
functions, called by address, with p its flat parameters (P, 1). ``step`` writes
f(x_t, u_t) into x[t + 1], ``jacobian`` J = df/d[x; u] (n, n+m) into F[t, 0], ``curvature``
adds sum_i lam_{t+1,i} d2 f_i / d[x; u]2 (n+m, n+m) into C[t, 0]: the dynamics' part of the
Lagrangian's Hessian (Newton steps), the same as autograd's second derivatives of the torch
module (zero through an active clip). ``jacobian`` and ``curvature`` take place on a rolled-out
trajectory, x[t + 1] = f(x[t], u[t]): the built-in twins read cos th', sin th' from x[t + 1]
(the very numbers ``step`` computed from the same th') instead of calling libm again.

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

from mpc_policy.numerics.compiled._cache import kernel
from mpc_policy.numerics.compiled.traced import call

__all__ = [
    "COST_GOAL_WEIGHTED",
    "COST_QUADRATIC",
    "DYNAMICS_CARTPOLE",
    "DYNAMICS_PENDULUM",
    "DYNAMICS_TRACED",
    "DYNAMICS_WINDY_PENDULUM",
    "cost_quadratize",
    "cost_value",
    "dynamics_curvature",
    "dynamics_jacobian",
    "dynamics_step",
]

COST_QUADRATIC, COST_GOAL_WEIGHTED = 0, 1
DYNAMICS_PENDULUM, DYNAMICS_WINDY_PENDULUM, DYNAMICS_CARTPOLE = 1, 2, 3
DYNAMICS_TRACED = 4


# every twin kernel allocates nothing: _nrt=False, no reference counting of its arrays
# (called per step inside the solve's loop; see ddp.py)
@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _pendulum_coefficients(kind, p, b):
    """(A, B, D, E) of w_ddot = A sin th + B cos th + D w + E u for element b."""
    j = b if p.shape[1] > 1 else 0
    g, mass, length = p[0, j], p[1, j], p[2, j]
    if kind == DYNAMICS_PENDULUM:
        return 1.5 * g / length, 0.0, 0.0, 3.0 / (mass * length * length)
    inertia = mass * length * length / 3.0
    return 1.5 * g / length, -p[4, j] * length / inertia, -p[3, j] / inertia, 1.0 / inertia


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _clip(w, limit):
    """w clipped to [-limit, limit] (NaN stays NaN), and whether it was inside."""
    if w > limit:
        return limit, False
    if w < -limit:
        return -limit, False
    return w, w == w


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _cartpole(p, b, theta, w, u):
    """The cart-pole's accelerations and their first derivatives in (th, w, u):
    (w_dot, its th, w, u partials, v_dot, its partials, and the terms the second
    derivatives reuse: k, a, the denominator, sin, cos, a's partials, the denominator's)."""
    j = b if p.shape[1] > 1 else 0
    g, total, length = p[0, j], p[1, j] + p[2, j], p[3, j]
    k = p[2, j] * length / total
    S, K = math.sin(theta), math.cos(theta)
    a = u / total + k * w * w * S
    den = 4.0 / 3.0 * length - k * K * K
    alpha = (g * S - a * K) / den
    a_th, a_w, a_u = k * w * w * K, 2.0 * k * w * S, 1.0 / total
    den_th = 2.0 * k * K * S
    al_th = (g * K - a_th * K + a * S - alpha * den_th) / den
    al_w, al_u = -a_w * K / den, -a_u * K / den
    v_dot = a - k * alpha * K
    v_th = a_th - k * (al_th * K - alpha * S)
    v_w, v_u = a_w - k * al_w * K, a_u - k * al_u * K
    terms = (k, a, den, S, K, a_th, a_w, a_u, den_th, g)
    return alpha, al_th, al_w, al_u, v_dot, v_th, v_w, v_u, terms


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _cartpole_step(p, c, b, x, u, t) -> None:
    dt = c[0]
    theta = math.atan2(x[t, 3], x[t, 2])
    alpha, _, _, _, v_dot, _, _, _, _ = _cartpole(p, b, theta, x[t, 4], u[t, 0])
    theta_next = theta + dt * x[t, 4]
    x[t + 1, 0] = x[t, 0] + dt * x[t, 1]
    x[t + 1, 1] = x[t, 1] + dt * v_dot
    x[t + 1, 2] = math.cos(theta_next)
    x[t + 1, 3] = math.sin(theta_next)
    x[t + 1, 4] = x[t, 4] + dt * alpha


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _cartpole_jacobian(p, c, b, x, u, t, F) -> None:
    dt = c[0]
    cos, sin = x[t, 2], x[t, 3]
    radius2 = cos * cos + sin * sin
    th_c, th_s = -sin / radius2, cos / radius2
    theta = math.atan2(sin, cos)
    _, al_th, al_w, al_u, _, v_th, v_w, v_u, _ = _cartpole(p, b, theta, x[t, 4], u[t, 0])
    cos_next, sin_next = x[t + 1, 2], x[t + 1, 3]  # the step's, from the same th'
    for i in range(5):
        for j in range(6):
            F[t, 0, i, j] = 0.0
    F[t, 0, 0, 0], F[t, 0, 0, 1] = 1.0, dt
    F[t, 0, 1, 1] = 1.0
    F[t, 0, 1, 2], F[t, 0, 1, 3] = dt * v_th * th_c, dt * v_th * th_s
    F[t, 0, 1, 4], F[t, 0, 1, 5] = dt * v_w, dt * v_u
    for i, scale in ((2, -sin_next), (3, cos_next)):
        F[t, 0, i, 2], F[t, 0, i, 3], F[t, 0, i, 4] = scale * th_c, scale * th_s, scale * dt
    F[t, 0, 4, 2], F[t, 0, 4, 3] = dt * al_th * th_c, dt * al_th * th_s
    F[t, 0, 4, 4], F[t, 0, 4, 5] = 1.0 + dt * al_w, dt * al_u


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _cartpole_curvature(p, c, b, x, u, t, lam, C) -> None:
    """C[t, 0] += sum_i lam_{t+1,i} d2 f_i: the weighted Hessian G in y = (th, w, u),
    carried to x by Y' G Y + G_th d2 th (Y: dy/dx)."""
    dt = c[0]
    cos, sin = x[t, 2], x[t, 3]
    radius2 = cos * cos + sin * sin
    th_c, th_s = -sin / radius2, cos / radius2
    th_cc, th_cs = 2.0 * cos * sin / radius2**2, (sin * sin - cos * cos) / radius2**2
    theta, w = math.atan2(sin, cos), x[t, 4]
    alpha, al_th, al_w, al_u, _, v_th, _, _, terms = _cartpole(p, b, theta, w, u[t, 0])
    k, a, den, S, K, a_th, a_w, a_u, den_th, g = terms
    # second derivatives of a, the numerator, the denominator, w_dot and v_dot
    a_thth, a_thw, a_ww = -k * w * w * S, 2.0 * k * w * K, 2.0 * k * S
    den_thth = 2.0 * k * (K * K - S * S)
    al_thth = (
        -g * S - a_thth * K + 2.0 * a_th * S + a * K - 2.0 * al_th * den_th - alpha * den_thth
    ) / den
    al_thw = (-a_thw * K + a_w * S - al_w * den_th) / den
    al_thu = (a_u * S - al_u * den_th) / den
    al_ww = -a_ww * K / den
    v_thth = a_thth - k * (al_thth * K - 2.0 * al_th * S - alpha * K)
    v_thw = a_thw - k * (al_thw * K - al_w * S)
    v_thu = -k * (al_thu * K - al_u * S)
    v_ww = a_ww - k * al_ww * K
    cos_next, sin_next = x[t + 1, 2], x[t + 1, 3]  # the step's, from the same th'
    l1, l2, l3, l4 = lam[t + 1, 1], lam[t + 1, 2], lam[t + 1, 3], lam[t + 1, 4]
    ring = -l2 * cos_next - l3 * sin_next  # times t_y t_y'
    G_thth = dt * (l1 * v_thth + l4 * al_thth) + ring
    G_thw = dt * (l1 * v_thw + l4 * al_thw) + ring * dt
    G_thu = dt * (l1 * v_thu + l4 * al_thu)
    G_ww = dt * (l1 * v_ww + l4 * al_ww) + ring * dt * dt
    G_th = dt * (l1 * v_th + l4 * al_th) - l2 * sin_next + l3 * cos_next
    # Y' G Y + G_th d2 th on (cos, sin, w, u) = columns 2..5
    Y_th = (th_c, th_s)
    for i in range(2):
        for j in range(2):
            th_ij = th_cs if i != j else (th_cc if i == 0 else -th_cc)
            C[t, 0, 2 + i, 2 + j] += G_thth * Y_th[i] * Y_th[j] + G_th * th_ij
        C[t, 0, 2 + i, 4] += G_thw * Y_th[i]
        C[t, 0, 4, 2 + i] += G_thw * Y_th[i]
        C[t, 0, 2 + i, 5] += G_thu * Y_th[i]
        C[t, 0, 5, 2 + i] += G_thu * Y_th[i]
    C[t, 0, 4, 4] += G_ww


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _direction(cos, sin):
    """(cos th, sin th) of th = atan2(sin, cos): the point scaled onto the unit circle, without
    atan2 and its cos and sin (equal up to rounding); through atan2 at the origin (th = 0 or
    pi by the zeros' signs) and where the radius overflows."""
    radius = math.hypot(cos, sin)
    if radius > 0.0 and radius < math.inf:
        return cos / radius, sin / radius
    theta = math.atan2(sin, cos)
    return math.cos(theta), math.sin(theta)


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def dynamics_step(kind, p, c, b, x, u, t, code, work) -> None:
    """x[t + 1] = f(x[t], u[t]) of element b; x (T, n), u (T, m); a traced model's functions
    are at the addresses ``code`` (step, jacobian, curvature) with the scratch ``work``."""
    if kind == DYNAMICS_TRACED:
        call(code[0], p, x, u, work, t, x, x)
        return
    if kind == DYNAMICS_CARTPOLE:
        _cartpole_step(p, c, b, x, u, t)
        return
    A, Bc, D, E = _pendulum_coefficients(kind, p, b)
    dt = c[0]
    cos_th, sin_th = _direction(x[t, 0], x[t, 1])
    accel = A * sin_th + Bc * cos_th + D * x[t, 2] + E * u[t, 0]
    w, _ = _clip(x[t, 2] + dt * accel, c[1])
    # th' = th + dt w' by angle addition: one sincos for the step's angle
    cos_dt, sin_dt = math.cos(dt * w), math.sin(dt * w)
    x[t + 1, 0] = cos_th * cos_dt - sin_th * sin_dt
    x[t + 1, 1] = sin_th * cos_dt + cos_th * sin_dt
    x[t + 1, 2] = w


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def _partials(kind, p, c, b, x, u, t, w_row, th_row):
    """The rows d w' and d th' (d,) with respect to (cos, sin, w, u) at x[t], u[t]; returns
    (cos th, sin th, active, the angle's partials th_c, th_s, A, B)."""
    A, Bc, D, E = _pendulum_coefficients(kind, p, b)
    dt = c[0]
    cos, sin = x[t, 0], x[t, 1]
    radius2 = cos * cos + sin * sin
    th_c, th_s = -sin / radius2, cos / radius2
    cos_th, sin_th = _direction(cos, sin)
    accel = A * sin_th + Bc * cos_th + D * x[t, 2] + E * u[t, 0]
    _, inside = _clip(x[t, 2] + dt * accel, c[1])
    active = 1.0 if inside else 0.0
    a_theta = A * cos_th - Bc * sin_th
    w_row[0] = active * dt * a_theta * th_c
    w_row[1] = active * dt * a_theta * th_s
    w_row[2] = active * (1.0 + dt * D)
    w_row[3] = active * dt * E
    th_row[0] = th_c + dt * w_row[0]
    th_row[1] = th_s + dt * w_row[1]
    th_row[2] = dt * w_row[2]
    th_row[3] = dt * w_row[3]
    return cos_th, sin_th, active, th_c, th_s, A, Bc


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def dynamics_jacobian(kind, p, c, b, x, u, t, F, w_row, th_row, code, work) -> None:
    """F[t, 0] (n, d) = df/d[x; u] at x[t], u[t] of element b; w_row, th_row (d,) scratch."""
    if kind == DYNAMICS_TRACED:
        call(code[1], p, x, u, work, t, F, F)
        return
    if kind == DYNAMICS_CARTPOLE:
        _cartpole_jacobian(p, c, b, x, u, t, F)
        return
    _partials(kind, p, c, b, x, u, t, w_row, th_row)
    # cos th', sin th' are x[t + 1]'s, the same numbers step computed from the same th'
    cos_next, sin_next = x[t + 1, 0], x[t + 1, 1]
    for j in range(4):
        F[t, 0, 0, j] = -sin_next * th_row[j]
        F[t, 0, 1, j] = cos_next * th_row[j]
        F[t, 0, 2, j] = w_row[j]


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def dynamics_curvature(kind, p, c, b, x, u, t, lam, C, w_row, th_row, code, work) -> None:
    """C[t, 0] (d, d) += sum_i lam[t + 1, i] d2 f_i / d[x; u]2 at x[t], u[t] of element b."""
    if kind == DYNAMICS_TRACED:
        call(code[2], p, x, u, work, t, lam, C)
        return
    if kind == DYNAMICS_CARTPOLE:
        _cartpole_curvature(p, c, b, x, u, t, lam, C)
        return
    cos_th, sin_th, active, th_c, th_s, A, Bc = _partials(kind, p, c, b, x, u, t, w_row, th_row)
    dt = c[0]
    cos, sin = x[t, 0], x[t, 1]
    radius4 = (cos * cos + sin * sin) ** 2
    a_theta = A * cos_th - Bc * sin_th
    a_theta2 = -A * sin_th - Bc * cos_th
    cos_next, sin_next = x[t + 1, 0], x[t + 1, 1]  # as in dynamics_jacobian
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


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def cost_value(kind, Cq, cq, wgl, b, x, u, t, n, d):
    """The cost of step t of element b at x[t], u[t]; x (T, n), u (T, m), d = n + m (sizes
    as arguments: a caller's constants compile in)."""
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


@kernel(nogil=True, _nrt=False, no_cpython_wrapper=True)
def cost_quadratize(kind, Cq, cq, wgl, b, x, u, t, C, g, n, d) -> None:
    """Hessian C[t, 0] (d, d) and gradient g[t, 0] (d,) of step t of element b."""
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
