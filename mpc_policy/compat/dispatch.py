"""An mpc.pytorch problem as the native problem ``mpc_policy`` solves, and the plain solve.

mpc.pytorch's call ``MPC(...)(x_init, cost, dx)`` is one of

    QuadCost + LinDx   ->  one box-LQR problem (C, c, F, f), solved by ``lqr_solve``
    anything else      ->  a cost module and a dynamics module, solved by ``mpc_policy.MPC``

after the time-major terms are made batch first, ``u_zero_I`` is folded into the bounds and
the slew-rate penalty is folded into the state ([u_prev; x], ``slew``). ``NativeProblem`` is
that result; ``solve`` runs it once, ``trust_region`` runs it under ``delta_u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.compat.modules import RowCost, RowDynamics, has_jacobian
from mpc_policy.compat.problem import (
    control_bound,
    dynamics_terms,
    initial_controls,
    previous_controls,
    quadratic_terms,
    time_invariant_dynamics,
    zero_mask,
)
from mpc_policy.compat.slew import SlewCost, SlewDynamics, slew_linear, slew_quadratic
from mpc_policy.compat.terms import LinDx, QuadCost
from mpc_policy.costs import QuadraticCost
from mpc_policy.lqr import lqr_solve
from mpc_policy.mpc import MPC as NativeMPC
from mpc_policy.solution import Solution

__all__ = ["LQR_OPTIONS", "NativeProblem", "build_problem", "solve"]

# the options of a box-LQR solve (its gradient is exact, whatever the rule or Jacobian)
LQR_OPTIONS = ("max_iter", "tol", "line_search_decay", "max_line_search", "on_unconverged")


@dataclass(frozen=True)
class NativeProblem:
    """A problem in the native, batch-first form.

    Attributes:
        x_init: (B, n') initial states (n' = m + n with the slew-rate penalty).
        lower, upper: float, (B, T, m) tensor or None: the control bounds.
        n_ctrl: m.
        horizon: T.
        lqr: (C (B, T, d, d), c (B, T, d), F (B, T-1, n', d), f (B, T-1, n')) for a
            QuadCost with a LinDx, else None.
        cost: per-step cost module cost(x (B, T, n'), u (B, T, m)) -> (B, T), else None.
        dynamics: dynamics module on (..., n'), (..., m), else None.
        u_init: (B, T, m) warm start or None.
    """

    x_init: Tensor
    lower: float | Tensor | None
    upper: float | Tensor | None
    n_ctrl: int
    horizon: int
    lqr: tuple[Tensor, Tensor, Tensor, Tensor] | None
    cost: nn.Module | None
    dynamics: nn.Module | None
    u_init: Tensor | None


def build_problem(
    x_init: Tensor,
    cost: QuadCost | nn.Module,
    dx: LinDx | nn.Module,
    settings: dict[str, Any],
    jacobian: str,
) -> NativeProblem:
    """The native problem of an mpc.pytorch call.

    Args:
        x_init: [B, n] initial states.
        cost: a ``QuadCost`` or a row-wise cost module cost(tau [N, n+m]) -> [N].
        dx: a ``LinDx`` or a row-wise dynamics module dx(x [N, n], u [N, m]) -> [N, n].
        settings: the MPC's n_state, n_ctrl, T, u_lower, u_upper, u_zero_I, u_init,
            slew_rate_penalty and prev_ctrl, by name.
        jacobian: the native ``jacobian`` option ("autograd", "finite_diff", "analytic").
    """
    n, m, T = settings["n_state"], settings["n_ctrl"], settings["T"]
    batch = x_init.shape[0]
    if not isinstance(cost, (QuadCost, nn.Module)):
        raise TypeError(f"cost: expected a QuadCost or an nn.Module, received {type(cost)}")
    if not isinstance(dx, (LinDx, nn.Module)):
        raise TypeError(f"dx: expected a LinDx or an nn.Module, received {type(dx)}")
    zero = zero_mask(settings["u_zero_I"], T, batch, m)
    lower = control_bound("u_lower", settings["u_lower"], zero, T, batch, m, x_init)
    upper = control_bound("u_upper", settings["u_upper"], zero, T, batch, m, x_init)
    u_init = initial_controls(settings["u_init"], T, batch, m, x_init)
    gamma = settings["slew_rate_penalty"]
    if gamma is not None:
        prev = previous_controls(settings["prev_ctrl"], batch, m, x_init)
        x_init = torch.cat([prev, x_init], dim=-1)

    def native(**kw: Any) -> NativeProblem:
        base = {"lqr": None, "cost": None, "dynamics": None}
        base.update(kw)
        return NativeProblem(x_init, lower, upper, m, T, u_init=u_init, **base)

    cost_module: nn.Module
    if isinstance(cost, QuadCost):
        if cost.C is None:
            raise ValueError("QuadCost.C: expected a tensor, received None")
        C, c = quadratic_terms(cost.C, cost.c, T, batch, n + m)
        if gamma is not None:
            C, c = slew_quadratic(C, c, gamma, m)
        if isinstance(dx, LinDx):
            F, f = dynamics_terms(dx.F, dx.f, T, batch, n, n + m)
            if gamma is not None:
                F, f = slew_linear(F, f, m)
            return native(lqr=(C, c, F, f))
        cost_module = QuadraticCost(C, c)
    else:
        cost_module = RowCost(cost)
        if gamma is not None:
            cost_module = SlewCost(cost_module, gamma, m)

    dynamics: nn.Module
    if isinstance(dx, LinDx):
        dynamics = time_invariant_dynamics(*dynamics_terms(dx.F, dx.f, T, batch, n, n + m))
    else:
        if jacobian == "analytic" and not has_jacobian(dx):
            raise TypeError(
                f"dx: GradMethods.ANALYTIC (the default) needs a grad_input(x, u) "
                f"method; {type(dx).__name__} has none (pass "
                "grad_method=GradMethods.AUTO_DIFF or GradMethods.FINITE_DIFF)"
            )
        dynamics = RowDynamics(dx)
    if gamma is not None:
        dynamics = SlewDynamics(dynamics, m)
    return native(cost=cost_module, dynamics=dynamics)


def solve(
    problem: NativeProblem,
    options: dict[str, Any],
    lower: float | Tensor | None = None,
    upper: float | Tensor | None = None,
    u_init: Tensor | None = None,
) -> Solution:
    """Solve a native problem once.

    Args:
        problem: the problem.
        options: ``MPCOptions`` fields for ``MPC`` (``lqr_solve`` takes its subset).
        lower, upper: bounds replacing the problem's (a trust region), or None to keep them.
        u_init: (B, T, m) warm start replacing the problem's (box-DDP only), or None.
    """
    lower = problem.lower if lower is None else lower
    upper = problem.upper if upper is None else upper
    if problem.lqr is not None:
        lqr_options = {k: options[k] for k in LQR_OPTIONS}
        return lqr_solve(problem.x_init, *problem.lqr, lower, upper, **lqr_options)
    assert problem.cost is not None and problem.dynamics is not None
    solver = NativeMPC(
        problem.x_init.shape[1], problem.n_ctrl, problem.horizon, lower, upper, **options
    )
    start = problem.u_init if u_init is None else u_init
    return solver(problem.x_init, problem.cost, problem.dynamics, start)
