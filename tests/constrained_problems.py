"""Constrained test problems and their independent oracles (float64, one element at a time).

- ``VelocityLimit`` and ``PowerLimit``: constraint modules on the pendulum of
  ``tests.pendulum_model`` (state (cos, sin, velocity)), one affine in the state, one
  nonlinear in state and control (its curvature enters the Lagrangian's Hessian).
- ``slsqp_oracle``: the problem by single shooting (the controls the only variables, the
  states a torch rollout) solved by scipy's SLSQP with autograd gradients; its own
  multipliers of the inequality rows. Nothing is shared with the solver but the modules.
- ``dense_qp_oracle``: a constrained LQR problem (affine g) condensed into one dense QP over
  the stacked controls, its active set found by SLSQP, then solved exactly as the
  equality-constrained QP of that active set and certified (feasible, multipliers >= 0):
  for a convex QP those conditions are sufficient, so the answer is exact up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from tests.oracles import condense

F64 = torch.float64
# SLSQP stops on an absolute change of the objective: a scaled objective gets it closer
_SCALE = 1e3


class VelocityLimit(nn.Module):
    """|velocity| <= limit on the pendulum state (cos, sin, velocity): g (B, T, 2)."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = nn.Parameter(torch.tensor(limit, dtype=F64))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        velocity = x[..., 2:3]
        return torch.cat([velocity - self.limit, -velocity - self.limit], dim=-1)


class PowerLimit(nn.Module):
    """A nonlinear limit on torque and velocity: 0.5 u^2 + w v^2 <= budget, g (B, T, 1)."""

    def __init__(self, budget: float, weight: float = 0.2) -> None:
        super().__init__()
        self.budget = nn.Parameter(torch.tensor(budget, dtype=F64))
        self.weight = nn.Parameter(torch.tensor(weight, dtype=F64))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        value = 0.5 * u[..., :1] ** 2 + self.weight * x[..., 2:3] ** 2
        return value - self.budget


class Both(nn.Module):
    """Several constraint modules side by side (their rows concatenated)."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return torch.cat([part(x, u) for part in self.parts], dim=-1)


class AffineConstraints(nn.Module):
    """g_t = D tau_t + e (affine), D (p, n+m), e (p,), as parameters."""

    def __init__(self, D: Tensor, e: Tensor) -> None:
        super().__init__()
        self.D, self.e = nn.Parameter(D.clone()), nn.Parameter(e.clone())

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return torch.cat([x, u], dim=-1) @ self.D.T + self.e


class OracleSolution(NamedTuple):
    """x (T, n), u (T, m), multipliers (T, p) of the inequality rows (numpy float64)."""

    x: np.ndarray
    u: np.ndarray
    multipliers: np.ndarray


def _rollout(x_init: Tensor, u: Tensor, dynamics: nn.Module) -> Tensor:
    xs = [x_init]
    for t in range(u.shape[0] - 1):
        xs.append(dynamics(xs[-1].unsqueeze(0), u[t].unsqueeze(0))[0])
    return torch.stack(xs)


def slsqp_oracle(
    x_init: Tensor,
    cost: nn.Module,
    dynamics: nn.Module,
    constraints: nn.Module,
    T: int,
    bound: float,
    u_start: Tensor,
) -> OracleSolution:
    """One element's constrained problem by single shooting and SLSQP.

    Args:
        x_init: (n,) initial state; cost, dynamics, constraints: the modules (float64).
        T: horizon; bound: the box -bound <= u <= bound.
        u_start: (T, m) SLSQP's starting point.
    """
    m = u_start.shape[-1]

    def shoot(v: Tensor) -> tuple[Tensor, Tensor]:
        u = v.view(T, m)
        return _rollout(x_init, u, dynamics).unsqueeze(0), u.unsqueeze(0)

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        v = torch.tensor(z, dtype=F64).requires_grad_(True)
        value = _SCALE * cost(*shoot(v)).sum()
        (grad,) = torch.autograd.grad(value, v)
        return float(value.detach()), grad.numpy()

    def feasible_rows(v: Tensor) -> Tensor:
        return -constraints(*shoot(v))[0].reshape(-1)  # SLSQP's convention: >= 0

    def fun(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return feasible_rows(torch.tensor(z, dtype=F64)).numpy()

    def jac(z: np.ndarray) -> np.ndarray:
        jacobian = torch.autograd.functional.jacobian(feasible_rows, torch.tensor(z, dtype=F64))
        return jacobian.numpy()

    result = minimize(
        objective,
        u_start.reshape(-1).numpy(),
        jac=True,
        method="SLSQP",
        bounds=[(-bound, bound)] * (T * m),
        constraints=[{"type": "ineq", "fun": fun, "jac": jac}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )
    multipliers = np.asarray(result.multipliers) / _SCALE
    U, multipliers = _newton_polish(
        objective_of=lambda v: cost(*shoot(v)).sum(),
        rows_of=lambda v: -feasible_rows(v),
        U=torch.tensor(result.x, dtype=F64),
        multipliers=torch.tensor(multipliers, dtype=F64),
        bound=bound,
    )
    u = U.view(T, m)
    with torch.no_grad():
        x = _rollout(x_init, u, dynamics)
    return OracleSolution(x.numpy(), u.numpy(), multipliers.view(T, -1).numpy())


def _newton_polish(
    objective_of: Callable[[Tensor], Tensor],
    rows_of: Callable[[Tensor], Tensor],
    U: Tensor,
    multipliers: Tensor,
    bound: float,
) -> tuple[Tensor, Tensor]:
    """SLSQP's answer refined to rounding by Newton's method on the KKT conditions of its
    active set (rows with a multiplier, controls at the bound), then certified."""
    at_bound = U.abs() >= bound - 1e-9
    active = multipliers > 1e-9
    U = torch.where(at_bound, bound * U.sign(), U)
    free = ~at_bound
    mu = multipliers[active].clone()

    def embed(v: Tensor, base: Tensor) -> Tensor:
        full = base.clone()
        full[free] = v
        return full

    for _ in range(8):
        base, v = U, U[free]
        lagrangian = partial(_lagrangian, objective_of, rows_of, embed, base, mu, active)
        H = torch.autograd.functional.hessian(lagrangian, v)
        grad = torch.autograd.functional.jacobian(lagrangian, v)
        J = torch.zeros(0, v.numel(), dtype=F64)
        if bool(active.any()):
            J = torch.autograd.functional.jacobian(
                lambda w, base=base: rows_of(embed(w, base))[active], v
            ).reshape(-1, v.numel())
        k = J.shape[0]
        K = torch.cat([torch.cat([H, J.T], 1), torch.cat([J, torch.zeros(k, k, dtype=F64)], 1)])
        step = torch.linalg.solve(K, -torch.cat([grad, rows_of(U)[active]]))
        U = embed(v + step[: v.numel()], base)
        mu = mu + step[v.numel() :]
    U, mu = U.detach(), mu.detach()
    rows = rows_of(U).detach()
    assert float(rows.max()) <= 1e-10, "the oracle's point is not feasible"
    assert mu.numel() == 0 or float(mu.min()) >= 0, "the oracle has a negative multiplier"
    out = torch.zeros_like(multipliers)
    out[active] = mu
    # the bounds' multipliers: the Lagrangian's gradient must push each clamped control out
    push = torch.autograd.functional.jacobian(
        lambda full: objective_of(full) + (out * rows_of(full)).sum(), U
    )
    assert bool((push[at_bound] * U[at_bound].sign() <= 1e-9).all()), "a bound pulls inward"
    return U, out


def _lagrangian(
    objective_of: Callable[[Tensor], Tensor],
    rows_of: Callable[[Tensor], Tensor],
    embed: Callable[[Tensor, Tensor], Tensor],
    base: Tensor,
    mu: Tensor,
    active: Tensor,
    v: Tensor,
) -> Tensor:
    full = embed(v, base)
    return objective_of(full) + (mu * rows_of(full)[active]).sum()


def dense_qp_oracle(
    x_init: Tensor,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    D: Tensor,
    e: Tensor,
    bound: float,
) -> OracleSolution:
    """One constrained LQR problem (affine g_t = D tau_t + e) solved exactly as a dense QP.

    Args:
        x_init: (n,); C: (T, d, d); c: (T, d); F: (T-1, n, d); f: (T-1, n); D: (p, d);
        e: (p,); bound: the box -bound <= u <= bound.
    """
    T, d = c.shape
    n = x_init.shape[0]
    m, p = d - n, D.shape[0]
    M, r, H, g, _ = condense(x_init, C, c, F, f)
    D_block = torch.block_diag(*([D] * T))
    # the inequality rows: constraints A U <= b, then the box
    A = torch.cat([D_block @ M, torch.eye(T * m, dtype=F64), -torch.eye(T * m, dtype=F64)])
    b = torch.cat([-(D_block @ r + e.repeat(T)), torch.full((2 * T * m,), bound, dtype=F64)])
    A_np, b_np, H_np, g_np = A.numpy(), b.numpy(), H.numpy(), g.numpy()
    guess = minimize(
        lambda U: (0.5 * U @ H_np @ U + g_np @ U, H_np @ U + g_np),
        np.zeros(T * m),
        jac=True,
        method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda U: b_np - A_np @ U, "jac": lambda U: -A_np}],
        options={"ftol": 1e-15, "maxiter": 1000},
    ).x
    active = np.flatnonzero(A_np @ guess - b_np > -1e-7)
    A_a = A_np[active]
    k = len(active)
    K = np.block([[H_np, A_a.T], [A_a, np.zeros((k, k))]])
    solution = np.linalg.solve(K, np.concatenate([-g_np, b_np[active]]))
    U, nu = solution[: T * m], solution[T * m :]
    assert (A_np @ U - b_np).max() <= 1e-10, "the oracle's active set is not feasible"
    assert k == 0 or nu.min() >= -1e-10, "the oracle's active set has a negative multiplier"
    multipliers = np.zeros(A_np.shape[0])
    multipliers[active] = nu
    tau = (M @ torch.tensor(U, dtype=F64) + r).view(T, d).numpy()
    return OracleSolution(tau[:, :n], tau[:, n:], multipliers[: T * p].reshape(T, p))
