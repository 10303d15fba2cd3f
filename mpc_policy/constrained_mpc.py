"""``MPC(constraints=...)``: the constrained solve and its exact gradient, end to end.

Solves, for every batch element,

    min_{x, u}  sum_t C(x_t, u_t)   s.t.  x_1 = x_init,  x_{t+1} = f(x_t, u_t),
                                          u_lower <= u_t <= u_upper,  g(x_t, u_t) <= 0

by augmented-Lagrangian box-DDP (``augmented_lagrangian``), then attaches the implicit
gradient of its KKT conditions (``kkt``). An element that turns non-finite is NaN and out of
every gradient, as in the unconstrained solve; one that cannot meet its constraints is
``Status.INFEASIBLE``, reported like any other unconverged element (``on_unconverged``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.grad.attach import GradientProblem, attach, finish, rule_for
from mpc_policy.options import MPCOptions
from mpc_policy.problem.constraints import (
    CheckedConstraints,
    check_time_local,
    complementarity,
)
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics
from mpc_policy.problem.module_model import ModuleModel
from mpc_policy.problem.validation import check_device, check_finite, check_tensor
from mpc_policy.solution import ConstraintReport, Solution, Status
from mpc_policy.solve.augmented_lagrangian import augmented_lagrangian
from mpc_policy.solve.backend import select

__all__ = ["constrained_forward"]


def _multipliers(value: Tensor | None, shape: tuple[int, int, int], like: Tensor) -> Tensor:
    """The multipliers' warm start (B, T, p), zeros if None; negative entries are refused."""
    if value is None:
        return like.new_zeros(shape)
    value = check_tensor("multipliers", value)
    check_device("x_init", like, multipliers=value)
    if tuple(value.shape) != shape:
        raise ValueError(
            f"multipliers: expected shape (B, T, p) = {shape} (p rows of the constraints per "
            f"step), received {tuple(value.shape)}"
        )
    value = value.detach().to(like.dtype)
    check_finite(multipliers=value)
    if bool((value < 0).any()):
        raise ValueError(
            "multipliers: expected values >= 0 (multipliers of g <= 0), received a minimum "
            f"of {float(value.min()):.3g}"
        )
    return value


def constrained_forward(
    options: MPCOptions,
    sizes: tuple[int, int, int],
    constraints: nn.Module,
    x_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    u_init: Tensor,
    cost: nn.Module,
    dynamics: nn.Module,
    multipliers: Tensor | None,
) -> Solution:
    """The body of ``MPC.forward`` when the controller has constraints.

    Args:
        options: the controller's options.
        sizes: the state size n, the control size m and the horizon T.
        constraints: the user's constraint module.
        x_init: (B, n) initial states (checked).
        lower, upper: (B, T, m) control bounds or None (checked, completed).
        u_init: (B, T, m) warm start of the controls.
        cost, dynamics: the user's modules.
        multipliers: (B, T, p) warm start of the multipliers or None.
    """
    opts = options
    if opts.grad_method != "exact":
        raise ValueError(
            f'grad_method: expected "exact" with constraints (the implicit gradient of the '
            f"constrained KKT conditions), received {opts.grad_method!r}"
        )
    n_state, n_ctrl, T = sizes
    B = x_init.shape[0]
    checked_cost = CheckedCost(cost)
    checked_dynamics = CheckedDynamics(dynamics, n_state, n_ctrl, B)
    checked = CheckedConstraints(constraints)
    with torch.no_grad():
        p = checked.probe(x_init.detach().unsqueeze(1).expand(B, T, -1), u_init.detach())
    lam0 = _multipliers(multipliers, (B, T, p), x_init)
    lower_t = None if lower is None else lower.transpose(0, 1)
    upper_t = None if upper is None else upper.transpose(0, 1)
    kernels = select(opts.backend, x_init.device)
    u0 = u_init.detach().transpose(0, 1)

    def make_model(augmented: Any) -> Any:
        return ModuleModel(CheckedCost(augmented), checked_dynamics, opts, create_graph=False)

    result = augmented_lagrangian(
        make_model,
        checked_cost,
        checked,
        x_init.detach(),
        u0,
        None if lower_t is None else lower_t.detach().contiguous(),
        None if upper_t is None else upper_t.detach().contiguous(),
        lam0,
        opts,
        kernels,
    )
    info = result.info
    # a row that reads another step would get a wrong Jacobian: checked at the solution
    check_time_local(checked, result.x, result.u)
    info.enforce(
        opts.on_unconverged, f"{checked_cost.name}, {checked_dynamics.name}, {checked.name}"
    )
    clamped = ~result.free
    problem = GradientProblem(
        checked_cost,
        checked_dynamics,
        x_init,
        u0,
        lower_t,
        upper_t,
        result,
        info.converged,
        opts,
        kernels,
        constraints=checked,
        multipliers=result.multipliers.transpose(0, 1),
        clamped=clamped,
    )
    x, u, rows = attach(
        rule_for(opts.grad_method, constrained=True), problem, info, (cost, dynamics, constraints)
    )
    x, u, value = finish(x, u, info, rows, cost, checked_cost, opts)
    report = ConstraintReport(
        values=result.values,
        multipliers=result.multipliers,
        active=result.multipliers > 0,
        bounds_active=clamped.transpose(0, 1),
        violation=torch.relu(result.values).amax(dim=(1, 2)),
        residual=complementarity(result.values, result.multipliers),
        penalty=result.penalty,
        outer_iterations=result.outer_iterations,
        feasible=info.codes != int(Status.INFEASIBLE),
    )
    return Solution(x, u, value, info, report)
