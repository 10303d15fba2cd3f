"""The one seam between a solve and its gradient: which rule differentiates it, and how the
rule's answer is attached to the returned trajectory.

The forward solve runs without a graph (inference mode; ``grad_method="unroll"`` aside) and
returns a fixed point (x, u). ``attach`` replaces it by the same values carrying the gradient
of the chosen rule:

- ``"exact"`` and ``"paper"``: the implicit rule (``fixed_point.implicit_solution``): one LQR
  solve at the fixed point, with the Hessian of the Lagrangian or the cost Hessian alone;
- ``"unroll"``: autograd through the iterations of a solve run with the graph kept;
- constrained problems (``"exact"`` only): the implicit rule of the KKT conditions with the
  constraints' multipliers (``kkt.kkt_solution``).

Invariants every rule keeps: the values it returns equal the solve's (x, u) exactly, only the
graph differs, so the forward's answer never depends on whether a gradient was asked for; a
NONFINITE element is NaN and takes no part in any gradient (the rule runs on the finite rows
alone, with the modules restricted to them, so not even 0 * NaN reaches a shared parameter);
``on_unconverged="zero_grad"`` detaches the unconverged elements after the rule.
Time-major shapes inside: x (T, B, n), u (T, B, m).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.grad.fixed_point import implicit_solution
from mpc_policy.grad.kkt import kkt_solution
from mpc_policy.options import MPCOptions
from mpc_policy.problem.constraints import CheckedConstraints
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics
from mpc_policy.problem.module_model import ModuleModel
from mpc_policy.problem.restriction import on_rows, restrict
from mpc_policy.solution import SolverInfo
from mpc_policy.solve.augmented_lagrangian import ALResult
from mpc_policy.solve.backend import Kernels
from mpc_policy.solve.ddp import DDPResult, box_ddp

__all__ = ["GradientProblem", "attach", "finish", "rule_for"]


@dataclass(frozen=True)
class GradientProblem:
    """What a gradient rule needs of a solved problem (modules restricted to its rows).

    Attributes:
        cost, dynamics: the checked modules.
        x_init: (B, n) initial states, with their graph.
        u_init: (T, B, m) the solve's warm start (constant).
        lower, upper: (T, B, m) control bounds with their graph, or None.
        result: the solve of all B elements (box-DDP, or the augmented Lagrangian's).
        converged: (B,) the converged elements.
        options: the solver options.
        kernels: the numerics' backend.
        constraints: the checked constraints (constrained problems), or None.
        multipliers: (T, B, p) their multipliers at the solution, or None.
        clamped: (T, B, m) the controls held at a bound (constrained problems), or None.
    """

    cost: CheckedCost
    dynamics: CheckedDynamics
    x_init: Tensor
    u_init: Tensor
    lower: Tensor | None
    upper: Tensor | None
    result: DDPResult | ALResult
    converged: Tensor
    options: MPCOptions
    kernels: Kernels
    constraints: CheckedConstraints | None = None
    multipliers: Tensor | None = None
    clamped: Tensor | None = None


Rule = Callable[[GradientProblem, Tensor | None], tuple[Tensor, Tensor]]


def _implicit(problem: GradientProblem, rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """ "exact" and "paper": one LQR solve at the fixed point (sections 3 and 4.1)."""
    assert isinstance(problem.result, DDPResult)
    return implicit_solution(
        problem.cost,
        problem.dynamics,
        problem.x_init,
        problem.lower,
        problem.upper,
        problem.result,
        problem.converged,
        rows,
        problem.options,
        problem.kernels,
    )


def _unrolled(problem: GradientProblem, rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """ "unroll": the solve ran with its graph; the finite rows alone solve again with theirs
    (the whole batch's graph reaches the NaN rows)."""
    if rows is None:
        return problem.result.x, problem.result.u
    model = ModuleModel(problem.cost, problem.dynamics, problem.options, create_graph=True)
    sub = box_ddp(
        model,
        problem.x_init[rows],
        problem.u_init[:, rows],
        None if problem.lower is None else problem.lower[:, rows],
        None if problem.upper is None else problem.upper[:, rows],
        problem.options,
        warn_regularization=False,
        kernels=problem.kernels,
    )
    return sub.x, sub.u


def _constrained(problem: GradientProblem, rows: Tensor | None) -> tuple[Tensor, Tensor]:
    """Constrained problems: the implicit rule of the KKT conditions (``kkt``)."""
    assert problem.constraints is not None and problem.multipliers is not None
    assert problem.clamped is not None
    sub = slice(None) if rows is None else rows
    result = problem.result
    return kkt_solution(
        problem.cost,
        problem.dynamics,
        problem.constraints,
        problem.x_init[sub],
        None if problem.lower is None else problem.lower[:, sub],
        None if problem.upper is None else problem.upper[:, sub],
        result.x[:, sub],
        result.u[:, sub],
        problem.multipliers[:, sub],
        problem.clamped[:, sub],
        problem.options,
        problem.converged[sub],
    )


RULES: dict[str, Rule] = {"exact": _implicit, "paper": _implicit, "unroll": _unrolled}


def rule_for(grad_method: str, constrained: bool) -> Rule:
    """The gradient rule of ``grad_method`` (constrained problems: the KKT rule)."""
    return _constrained if constrained else RULES[grad_method]


def _restricted(
    problem: GradientProblem,
    cost: nn.Module,
    dynamics: nn.Module,
    constraints: nn.Module | None,
    rows: Tensor,
) -> GradientProblem:
    """The problem with its modules restricted to the elements ``rows`` (``restrict``)."""
    return replace(
        problem,
        cost=CheckedCost(restrict(cost, rows)),
        dynamics=CheckedDynamics(
            restrict(dynamics, rows),
            problem.dynamics.n_state,
            problem.dynamics.n_ctrl,
            rows.numel(),
        ),
        constraints=None
        if constraints is None or problem.constraints is None
        else CheckedConstraints(restrict(constraints, rows), problem.constraints.n_rows),
    )


def _values(z: Tensor) -> Tensor:
    """z without its graph (z itself where it has none: no tensor operation)."""
    return z.detach() if z.requires_grad else z


def attach(
    rule: Rule,
    problem: GradientProblem,
    info: SolverInfo,
    modules: tuple[nn.Module, nn.Module, nn.Module | None],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The solution x (T, B, n), u (T, B, m) with the rule's gradient attached.

    Args:
        rule: the gradient rule (``rule_for``).
        problem: the solved problem.
        info: the solve's report (its NONFINITE elements are NaN and out of the gradient).
        modules: the user's cost, dynamics and constraints (or None), unchecked, for the
            restriction to the finite rows.

    Returns:
        x, u, and the finite elements ``rows`` (k,) (None when all are finite).
    """
    result = problem.result
    bad = info.nonfinite
    rows = torch.nonzero(~bad).flatten() if bool(bad.any()) else None
    x, u = _values(result.x), _values(result.u)
    if rows is not None:
        nan = torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
        keep = ~bad.view(1, -1, 1)
        x, u = torch.where(keep, x, nan), torch.where(keep, u, nan)
    with on_rows(rows, bad.shape[0]):
        # an empty batch has no gradient to attach (and no KKT rows to shape)
        finite = rows is None or rows.numel() > 0
        if torch.is_grad_enabled() and bad.shape[0] > 0 and finite:
            sub = problem if rows is None else _restricted(problem, *modules, rows)
            x_sub, u_sub = rule(sub, rows)
            x = x_sub if rows is None else x.index_copy(1, rows, x_sub)
            u = u_sub if rows is None else u.index_copy(1, rows, u_sub)
    return x, u, rows


class _FirstOrder(torch.autograd.Function):
    """Identity on x (T, B, n) and u (T, B, m) whose backward refuses to be differentiated.

    The implicit gradient at a fixed point is exact to first order only: its backward
    solves with the local model's Hessian and Jacobians as constants, so a double backward
    through it misses their derivatives (0.2-0.7 % off finite differences on a pendulum).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return x.view_as(x), u.view_as(u)

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor, grad_u: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled():
            raise ValueError(
                "create_graph: a double backward (create_graph=True, or torch.autograd.grad of "
                "a gradient) through MPC is not supported: the implicit gradient of "
                'grad_method="exact" and "paper" is exact to first order only. lqr_solve '
                'supports it exactly; grad_method="unroll" differentiates the iterations'
            )
        return grad_x, grad_u


def finish(
    x: Tensor,
    u: Tensor,
    info: SolverInfo,
    rows: Tensor | None,
    cost: nn.Module,
    checked: CheckedCost,
    options: MPCOptions,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-first x (B, T, n), u (B, T, m) and their cost (B,) from the time-major
    solution x (T, B, n), u (T, B, m): ``on_unconverged="zero_grad"`` applied, and a double
    backward refused where the rule is exact to first order only (every rule but "unroll",
    unless ``double_backward="first_order"``); ``rows`` (k,) are the finite elements (all if
    None), the others' cost is NaN."""
    if options.on_unconverged == "zero_grad" and not info.all_converged:
        keep = info.converged.view(1, -1, 1)
        x = torch.where(keep, x, x.detach())
        u = torch.where(keep, u, u.detach())
    exact_first_order = options.grad_method != "unroll" and options.double_backward == "refuse"
    if exact_first_order and (x.requires_grad or u.requires_grad):
        x, u = _FirstOrder.apply(x, u)
    x, u = x.transpose(0, 1), u.transpose(0, 1)
    with on_rows(rows, x.shape[0]):
        if rows is None:
            return x, u, checked(x, u).sum(-1)
        value = torch.full(x.shape[:1], float("nan"), dtype=x.dtype, device=x.device)
        if rows.numel() > 0:
            restricted = CheckedCost(restrict(cost, rows))
            value = value.index_copy(0, rows, restricted(x[rows], u[rows]).sum(-1))
    return x, u, value
