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

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mpc_policy.augmented_lagrangian import augmented_lagrangian
from mpc_policy.backend import select
from mpc_policy.constraints import (
    CheckedConstraints,
    ConstraintReport,
    check_time_local,
    complementarity,
)
from mpc_policy.contract import CheckedCost, CheckedDynamics, on_rows, restrict
from mpc_policy.kkt import kkt_solution
from mpc_policy.module_model import ModuleModel
from mpc_policy.solution import Solution, Status
from mpc_policy.validation import check_device, check_finite, check_tensor

if TYPE_CHECKING:
    from mpc_policy.mpc import MPC

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
    mpc: MPC,
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
        mpc: the controller (options, sizes, constraints, its helpers for restricted rows).
        x_init: (B, n) initial states (checked).
        lower, upper: (B, T, m) control bounds or None (checked, completed).
        u_init: (B, T, m) warm start of the controls.
        cost, dynamics: the user's modules.
        multipliers: (B, T, p) warm start of the multipliers or None.
    """
    opts = mpc.options
    if opts.grad_method != "exact":
        raise ValueError(
            f'grad_method: expected "exact" with constraints (the implicit gradient of the '
            f"constrained KKT conditions), received {opts.grad_method!r}"
        )
    assert mpc.constraints is not None
    B, T = x_init.shape[0], mpc.horizon
    checked_cost = CheckedCost(cost)
    checked_dynamics = CheckedDynamics(dynamics, mpc.n_state, mpc.n_ctrl, B)
    checked = CheckedConstraints(mpc.constraints)
    with torch.no_grad():
        p = checked.probe(x_init.detach().unsqueeze(1).expand(B, T, -1), u_init.detach())
    lam0 = _multipliers(multipliers, (B, T, p), x_init)
    lower_t = None if lower is None else lower.transpose(0, 1)
    upper_t = None if upper is None else upper.transpose(0, 1)
    kernels = select(opts.backend, x_init.device)

    def make_model(augmented: Any) -> Any:
        return ModuleModel(CheckedCost(augmented), checked_dynamics, opts, create_graph=False)

    result = augmented_lagrangian(
        make_model,
        checked_cost,
        checked,
        x_init.detach(),
        u_init.detach().transpose(0, 1),
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

    bad = info.nonfinite
    rows = torch.nonzero(~bad).flatten() if bool(bad.any()) else None
    nan = torch.tensor(float("nan"), dtype=x_init.dtype, device=x_init.device)
    keep = ~bad.view(1, -1, 1)
    x = torch.where(keep, result.x, nan)
    u = torch.where(keep, result.u, nan)
    mu = result.multipliers.transpose(0, 1)
    clamped = ~result.free
    with on_rows(rows, B):
        # an empty batch has no gradient to attach (and no KKT rows to shape)
        if torch.is_grad_enabled() and B > 0 and (rows is None or rows.numel() > 0):
            sub = slice(None) if rows is None else rows
            cost_r, dynamics_r = (
                (checked_cost, checked_dynamics)
                if rows is None
                else mpc._restricted(cost, dynamics, rows)
            )
            constraints_r = (
                checked if rows is None else CheckedConstraints(restrict(mpc.constraints, rows), p)
            )
            x_sub, u_sub = kkt_solution(
                cost_r,
                dynamics_r,
                constraints_r,
                x_init[sub],
                None if lower_t is None else lower_t[:, sub],
                None if upper_t is None else upper_t[:, sub],
                result.x[:, sub],
                result.u[:, sub],
                mu[:, sub],
                clamped[:, sub],
                opts,
                info.converged[sub],
            )
            x = x_sub if rows is None else x.index_copy(1, rows, x_sub)
            u = u_sub if rows is None else u.index_copy(1, rows, u_sub)
    x, u, value = mpc._finish(x, u, info, rows, cost, checked_cost)
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
