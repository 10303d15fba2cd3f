"""Independent oracles for the box-QP and box-LQR layers, and random test problems.

A box QP  min 1/2 x'Qx + q'x  s.t. lower <= x <= upper  with Q = L L' is the bounded
least-squares problem  min 1/2 ||L'x + L^{-1} q||^2  (the two objectives differ by a
constant), which scipy's BVLS solves by an active-set method; one more dense solve on the
free set, and a KKT check, make the answer exact up to rounding.

A box-LQR problem is condensed into one such QP over the stacked controls U = [u_1; ...; u_T]:
eliminating the dynamics gives tau = M U + r (tau = [x_1; u_1; ...; x_T; u_T]), so the
objective is 1/2 U'HU + g'U + const with H = M'CM, g = M'(Cr + c) and C block-diagonal.
Nothing here shares code or method with the solver (Riccati recursion, projected Newton).

Everything is float64, one problem at a time. The condensation is written in torch so the
same code also gives a differentiable oracle: with the active set held fixed, the solution
of the dense KKT system is differentiated by plain autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg import solve_triangular
from scipy.optimize import lsq_linear
from torch import Tensor

F64 = torch.float64


class BoxQPSolution(NamedTuple):
    """Exact box-QP solution (numpy, float64): x (N,), at_lower (N,), at_upper (N,) masks,
    and gradient (N,) = Qx + q (the bound multipliers on the active coordinates)."""

    x: np.ndarray
    at_lower: np.ndarray
    at_upper: np.ndarray
    gradient: np.ndarray


def solve_box_qp(Q: np.ndarray, q: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """Exact minimizer of 1/2 x'Qx + q'x on the box, by BVLS on the Cholesky form.

    Args:
        Q: (N, N) symmetric positive definite.
        q: (N,) linear term.
        lower: (N,) lower bounds (-inf allowed).
        upper: (N,) upper bounds (+inf allowed).

    Returns:
        ``BoxQPSolution``; raises AssertionError if the KKT conditions do not hold.
    """
    Q = 0.5 * (Q + Q.T)
    L = np.linalg.cholesky(Q)
    b = -solve_triangular(L, q, lower=True)
    result = lsq_linear(L.T, b, bounds=(lower, upper), method="bvls", tol=1e-15, max_iter=1000)
    at_lower, at_upper = result.active_mask == -1, result.active_mask == 1
    free = ~(at_lower | at_upper)
    x = np.where(at_lower, lower, np.where(at_upper, upper, result.x))
    # polish: the exact solution on the free set with the active coordinates at their bounds
    if free.any():
        rhs = q[free] + Q[np.ix_(free, ~free)] @ x[~free]
        x[free] = np.linalg.solve(Q[np.ix_(free, free)], -rhs)
    gradient = Q @ x + q
    scale = 1e-9 * (1.0 + np.abs(Q).max() * (1.0 + np.abs(x).max()) + np.abs(q).max())
    slack = 1e-12 * (1.0 + np.abs(x).max())
    assert np.all(x >= lower - slack) and np.all(x <= upper + slack), "oracle: infeasible"
    x = np.clip(x, lower, upper)
    assert np.all(gradient[at_lower] >= -scale), "oracle: wrong multiplier sign at a lower bound"
    assert np.all(gradient[at_upper] <= scale), "oracle: wrong multiplier sign at an upper bound"
    return BoxQPSolution(x, at_lower, at_upper, gradient)


def condense(x_init: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor):
    """Dense QP over the stacked controls of one LQR problem (differentiable, torch).

    Args:
        x_init: (n,) initial state.
        C: (T, d, d) quadratic terms, d = n + m.
        c: (T, d) linear terms.
        F: (T-1, n, d) dynamics matrices.
        f: (T-1, n) dynamics offsets.

    Returns:
        M (T*d, T*m) and r (T*d,) with tau = M U + r; H (T*m, T*m) and g (T*m,) of the
        objective 1/2 U'HU + g'U + const; and the symmetrized block-diagonal C (T*d, T*d).
    """
    T, d = c.shape
    n = x_init.shape[0]
    m = d - n
    eye_u = torch.eye(T * m, dtype=C.dtype)
    s = x_init  # state offset: x_t = s_t + S_t U
    S = torch.zeros(n, T * m, dtype=C.dtype)
    M_rows, r_rows = [], []
    for t in range(T):
        E = eye_u[t * m : (t + 1) * m]  # selects u_t from U
        M_rows += [S, E]
        r_rows += [s, torch.zeros(m, dtype=C.dtype)]
        if t < T - 1:
            Fx, Fu = F[t][:, :n], F[t][:, n:]
            s = Fx @ s + f[t]
            S = Fx @ S + Fu @ E
    M, r = torch.cat(M_rows), torch.cat(r_rows)
    C_block = torch.block_diag(*(0.5 * (C_t + C_t.T) for C_t in C))
    H = M.T @ C_block @ M
    g = M.T @ (C_block @ r + c.reshape(-1))
    return M, r, 0.5 * (H + H.T), g, C_block


class LQRSolution(NamedTuple):
    """Exact solution of one box-LQR problem (numpy, float64).

    Attributes: x (T, n), u (T, m), cost (float), at_lower (T, m), at_upper (T, m), and
    gradient (T, m) of the condensed objective with respect to U (the bound multipliers).
    """

    x: np.ndarray
    u: np.ndarray
    cost: float
    at_lower: np.ndarray
    at_upper: np.ndarray
    gradient: np.ndarray


class BoxLQRProblem(NamedTuple):
    """A batch of box-LQR problems, batch-first float64 (see DESIGN.md); bounds may be None."""

    x_init: Tensor  # (B, n)
    C: Tensor  # (B, T, d, d)
    c: Tensor  # (B, T, d)
    F: Tensor  # (B, T-1, n, d)
    f: Tensor  # (B, T-1, n)
    u_lower: Tensor | None  # (B, T, m)
    u_upper: Tensor | None  # (B, T, m)


def _bound(bound: Tensor | None, b: int, shape: tuple[int, int], sign: float) -> np.ndarray:
    if bound is None:
        return np.full(shape, sign * np.inf)
    return bound[b].detach().numpy().reshape(shape).copy()


def lqr_oracle(problem: BoxLQRProblem, b: int) -> LQRSolution:
    """Exact solution of batch element ``b`` of ``problem`` by condensing and BVLS."""
    x_init, C, c, F, f = (z[b].detach() for z in problem[:5])
    T, d = c.shape
    n = x_init.shape[0]
    m = d - n
    M, r, H, g, C_block = (z.numpy() for z in condense(x_init, C, c, F, f))
    lower = _bound(problem.u_lower, b, (T * m,), -1.0)
    upper = _bound(problem.u_upper, b, (T * m,), 1.0)
    qp = solve_box_qp(H, g, lower, upper)
    tau = M @ qp.x + r
    cost = float(tau @ (0.5 * C_block @ tau + c.numpy().reshape(-1)))
    tau = tau.reshape(T, d)
    return LQRSolution(
        tau[:, :n],
        tau[:, n:],
        cost,
        qp.at_lower.reshape(T, m),
        qp.at_upper.reshape(T, m),
        qp.gradient.reshape(T, m),
    )


def lqr_oracle_batch(problem: BoxLQRProblem) -> tuple[Tensor, Tensor, Tensor]:
    """Oracle x (B, T, n), u (B, T, m) and cost (B,) of every element, as float64 tensors."""
    solutions = [lqr_oracle(problem, b) for b in range(problem.x_init.shape[0])]
    x = torch.from_numpy(np.stack([s.x for s in solutions]))
    u = torch.from_numpy(np.stack([s.u for s in solutions]))
    cost = torch.tensor([s.cost for s in solutions], dtype=F64)
    return x, u, cost


def active_set_lqr(
    problem: BoxLQRProblem, at_lower: Tensor, at_upper: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable dense solution with a fixed active set (autograd through the KKT solve).

    With the active controls at their bounds, the free controls solve H_ff U_f = -(g_f +
    H_fa U_a): this is the exact solution wherever the active set is locally constant, and
    torch differentiates it with respect to every tensor in ``problem``.

    Args:
        problem: batch of problems (tensors may require grad).
        at_lower: (B, T, m) controls held at the lower bound.
        at_upper: (B, T, m) controls held at the upper bound.

    Returns:
        x (B, T, n), u (B, T, m), cost (B,).
    """
    xs, us, costs = [], [], []
    B, T, d = problem.c.shape
    n = problem.x_init.shape[1]
    for b in range(B):
        M, r, H, g, C_block = condense(*(z[b] for z in problem[:5]))
        lower = problem.u_lower[b].reshape(-1) if problem.u_lower is not None else None
        upper = problem.u_upper[b].reshape(-1) if problem.u_upper is not None else None
        U = torch.zeros_like(g)
        lo_mask, hi_mask = at_lower[b].reshape(-1), at_upper[b].reshape(-1)
        if lower is not None:
            U = torch.where(lo_mask, lower, U)
        if upper is not None:
            U = torch.where(hi_mask, upper, U)
        free = torch.nonzero(~(lo_mask | hi_mask)).flatten()
        rhs = g.index_select(0, free) + H.index_select(0, free) @ U
        H_ff = H.index_select(0, free).index_select(1, free)
        U = U.index_put((free,), -torch.linalg.solve(H_ff, rhs))
        tau = M @ U + r
        costs.append(tau @ (0.5 * C_block @ tau + problem.c[b].reshape(-1)))
        tau = tau.reshape(T, d)
        xs.append(tau[:, :n])
        us.append(tau[:, n:])
    return torch.stack(xs), torch.stack(us), torch.stack(costs)


def _random_C(g: torch.Generator, B: int, T: int, d: int, hard: Tensor) -> Tensor:
    """(B, T, d, d) PD costs: A A' + 0.1 I, or, where hard, eigenvalues 1e-2 .. 1e2 (cond 1e4)."""
    A = torch.randn(B, T, d, d, generator=g, dtype=F64)
    easy = A @ A.transpose(-1, -2) + 0.1 * torch.eye(d, dtype=F64)
    O, _ = torch.linalg.qr(torch.randn(B, T, d, d, generator=g, dtype=F64))
    spectrum = torch.logspace(-2, 2, d, dtype=F64)
    ill = O @ torch.diag_embed(spectrum.expand(B, T, d)) @ O.transpose(-1, -2)
    return torch.where(hard.view(B, 1, 1, 1), ill, easy)


def _active_fraction(solution: LQRSolution | BoxQPSolution) -> float:
    return float(np.mean(solution.at_lower | solution.at_upper))


def random_box_lqr(
    B: int,
    n: int,
    m: int,
    T: int,
    seed: int,
    bounded_fraction: tuple[float, float] | None = (0.3, 0.6),
    hard_fraction: float = 0.0,
    calibrate: bool = True,
) -> BoxLQRProblem:
    """Random box-LQR problems with a controlled share of controls at a bound.

    Args:
        B, n, m, T: batch, state, control sizes and horizon.
        seed: generator seed.
        bounded_fraction: (low, high) share of each element's controls that sit at a bound at
            the solution; None gives unbounded problems.
        hard_fraction: probability that an element is hard: ill-conditioned C (cond 1e4),
            10x larger x_init and c, dynamics near the stability limit.
        calibrate: pick each element's bound scale with the oracle so that its share lies in
            ``bounded_fraction`` (else: a quantile of the unbounded |u|, no guarantee).

    Returns:
        A ``BoxLQRProblem`` with (B, T, m) bounds, lower < 0 < upper.
    """
    g = torch.Generator().manual_seed(seed)
    d = n + m
    hard = torch.rand(B, generator=g, dtype=F64) < hard_fraction
    scale = torch.where(hard, 10.0, 1.0).to(F64)
    C = _random_C(g, B, T, d, hard)
    c = scale.view(B, 1, 1) * torch.randn(B, T, d, generator=g, dtype=F64)
    Fx = torch.randn(B, T - 1, n, n, generator=g, dtype=F64)
    radius = torch.where(hard, 1.05, 0.9).view(B, 1, 1, 1)
    Fx = radius * Fx / torch.linalg.matrix_norm(Fx, 2).clamp_min(1e-12)[..., None, None]
    Fu = torch.randn(B, T - 1, n, m, generator=g, dtype=F64)
    F = torch.cat([Fx, Fu], dim=-1)
    f = 0.5 * scale.view(B, 1, 1) * torch.randn(B, T - 1, n, generator=g, dtype=F64)
    x_init = scale.view(B, 1) * torch.randn(B, n, generator=g, dtype=F64)
    free_problem = BoxLQRProblem(x_init, C, c, F, f, None, None)
    if bounded_fraction is None:
        return free_problem
    low_share, high_share = bounded_fraction
    asymmetry_lo = 0.6 + 0.8 * torch.rand(B, T, m, generator=g, dtype=F64)
    asymmetry_hi = 0.6 + 0.8 * torch.rand(B, T, m, generator=g, dtype=F64)
    lowers, uppers = [], []
    for b in range(B):
        u_free = np.abs(lqr_oracle(free_problem, b).u)
        target = 0.5 * (low_share + high_share)
        s0 = max(float(np.quantile(u_free, 1.0 - target)), 1e-3)
        candidates = [s0] if not calibrate else s0 * np.exp(np.linspace(-3.0, 3.0, 61))
        best = None
        for s in sorted(candidates, key=lambda v: abs(np.log(v / s0))):
            lower, upper = -s * asymmetry_lo[b : b + 1], s * asymmetry_hi[b : b + 1]
            one = BoxLQRProblem(*(z[b : b + 1] for z in free_problem[:5]), lower, upper)
            if not calibrate or low_share <= _active_fraction(lqr_oracle(one, 0)) <= high_share:
                best = (lower[0], upper[0])
                break
        if best is None:
            raise RuntimeError(f"random_box_lqr: no bound scale for element {b}; change seed")
        lowers.append(best[0])
        uppers.append(best[1])
    return free_problem._replace(u_lower=torch.stack(lowers), u_upper=torch.stack(uppers))


def lqr_margin(problem: BoxLQRProblem, b: int) -> float:
    """Distance of element ``b`` from an active-set switch: the smallest of the free controls'
    distances to their bounds and the active bounds' multipliers (0 if degenerate)."""
    solution = lqr_oracle(problem, b)
    T, m = solution.u.shape
    lower = _bound(problem.u_lower, b, (T, m), -1.0)
    upper = _bound(problem.u_upper, b, (T, m), 1.0)
    free = ~(solution.at_lower | solution.at_upper)
    gaps = [np.minimum(solution.u - lower, upper - solution.u)[free]]
    gaps += [solution.gradient[solution.at_lower], -solution.gradient[solution.at_upper]]
    return float(np.concatenate(gaps).min(initial=np.inf))


def random_box_qp(
    B: int,
    m: int,
    seed: int,
    bounded_fraction: tuple[float, float] | None = (0.3, 0.6),
    hard_fraction: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random box QPs Q (B, m, m), q (B, m), lower (B, m), upper (B, m), float64.

    Easy: Q = A A' + 0.1 I. Hard (with probability ``hard_fraction``): eigenvalues 1e-2 .. 1e2
    and a 100x larger q. Bounds put a share in ``bounded_fraction`` of each element's
    variables at a bound (infinite bounds when it is None).
    """
    g = torch.Generator().manual_seed(seed)
    hard = torch.rand(B, generator=g, dtype=F64) < hard_fraction
    Q = _random_C(g, B, 1, m, hard)[:, 0]
    q = torch.where(hard, 100.0, 1.0).to(F64).view(B, 1) * torch.randn(B, m, generator=g, dtype=F64)
    if bounded_fraction is None:
        inf = torch.full((B, m), torch.inf, dtype=F64)
        return Q, q, -inf, inf
    asymmetry_lo = 0.6 + 0.8 * torch.rand(B, m, generator=g, dtype=F64)
    asymmetry_hi = 0.6 + 0.8 * torch.rand(B, m, generator=g, dtype=F64)
    lower, upper = torch.empty(B, m, dtype=F64), torch.empty(B, m, dtype=F64)
    for b in range(B):
        Qb, qb = Q[b].numpy(), q[b].numpy()
        s0 = float(np.abs(np.linalg.solve(Qb, -qb)).max())
        for s in s0 * np.exp(np.linspace(0.0, -6.0, 121)):
            lo, hi = -s * asymmetry_lo[b].numpy(), s * asymmetry_hi[b].numpy()
            share = _active_fraction(solve_box_qp(Qb, qb, lo, hi))
            if bounded_fraction[0] <= share <= bounded_fraction[1]:
                break
        else:
            raise RuntimeError(f"random_box_qp: no bound scale for element {b}; change seed")
        lower[b], upper[b] = torch.from_numpy(lo), torch.from_numpy(hi)
    return Q, q, lower, upper
