"""Augmented-Lagrangian box-DDP: inequality constraints g(x_t, u_t) <= 0 beside the exact box.

For multipliers lam (T, p) >= 0 and a penalty rho > 0 of its own, every batch element solves
by box-DDP (``solve.ddp.box_ddp``, on the compiled kernels where they serve)

    min_{x, u}  sum_t C(x_t, u_t) + sum_{t, i} psi(g_{t,i}(x_t, u_t); lam_{t,i}, rho)
    s.t.        x_1 = x_init,  x_{t+1} = f(x_t, u_t),  u_lower <= u_t <= u_upper,

    psi(g; lam, rho) = (max(0, lam + rho g)^2 - lam^2) / (2 rho)

(Powell-Hestenes-Rockafellar; the box stays exact, only g is priced). At its solution the
stationarity of the augmented cost is the constrained problem's with multipliers
mu = max(0, lam + rho g), so mu is the next lam; rho grows by ``penalty_growth`` when the
complementarity residual max |min(-g, mu)| did not fall below a quarter of its last value
(Birgin and Martinez, 2014, Algorithm 4.1). An element has converged when its box-DDP solve
has and that residual is at most ``constraint_tol``; it is ``Status.INFEASIBLE`` when its
violation stops falling at ``penalty_max``. Each element runs its own outer loop: finished
elements are left out of later solves (their modules restricted as box-DDP restricts them),
so no element's answer depends on the rest of its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from mpc_policy.options import MPCOptions
from mpc_policy.problem.constraints import CheckedConstraints, complementarity
from mpc_policy.problem.contract import CheckedCost
from mpc_policy.problem.restriction import restrictable
from mpc_policy.solution import SOURCE_CONSTRAINTS, SOURCE_COST, SolverInfo, Status
from mpc_policy.solve.backend import Kernels
from mpc_policy.solve.ddp import Model, box_ddp

__all__ = ["ALResult", "AugmentedCost", "RestrictableModel", "augmented_lagrangian"]

# box-DDP iterations of each solve after the first: the multipliers are updated from inexact
# minimizers (iLQR converges linearly on a penalized problem; its last digits are worth
# less than an update), and the final test asks the solve to reach the user's tol
_LATER_MAX_ITER = 10
_CONVERGED, _MAX_ITER = int(Status.CONVERGED), int(Status.MAX_ITER)
_NONFINITE, _INFEASIBLE = int(Status.NONFINITE), int(Status.INFEASIBLE)


class RestrictableModel(Model, Protocol):
    """A box-DDP ``Model`` that can be restricted to some batch elements (``mpc.ModuleModel``)."""

    def restrict(self, rows: Tensor, batch: int) -> RestrictableModel | None:
        """The problem of the elements ``rows`` (k,) of ``batch``, or None if unsafe."""
        ...


class AugmentedCost:
    """The cost plus the PHR price of the constraints, called like a cost (B, T).

    Args:
        cost: the user's cost, checked.
        constraints: the user's constraints, checked.
        multipliers: (B, T, p) lam >= 0.
        penalty: (B,) rho > 0.
        nonfinite: (B_all, 2) int8 record, shared with its restrictions, of the elements whose
            cost (column 0) or constraints (column 1) gave a NaN or Inf (1); new if None.
        elements: (B,) the elements of that record this cost is of (all if None).
    """

    def __init__(
        self,
        cost: CheckedCost,
        constraints: CheckedConstraints,
        multipliers: Tensor,
        penalty: Tensor,
        nonfinite: Tensor | None = None,
        elements: Tensor | None = None,
    ) -> None:
        self.cost, self.constraints = cost, constraints
        self.multipliers, self.penalty = multipliers, penalty
        if nonfinite is None:
            nonfinite = torch.zeros(penalty.shape[0], 2, dtype=torch.int8, device=penalty.device)
        self.nonfinite, self.elements = nonfinite, elements

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step augmented cost (B, T) of x (B, T, n), u (B, T, m)."""
        g = self.constraints(x, u)
        rho = self.penalty.view(-1, 1, 1)
        shifted = torch.relu(self.multipliers + rho * g)
        price = (shifted.square() - self.multipliers.square()) / (2.0 * rho)
        value = self.cost(x, u)
        self._record(value, g)
        return value + price.sum(-1)

    def _record(self, value: Tensor, g: Tensor) -> None:
        """Note the elements whose cost value (R, T) or constraints (R, T, p) are not finite
        (row r is element r mod B: candidates and copies are stacked in front)."""
        B = self.penalty.shape[0]
        if value.shape[0] % B:
            return
        with torch.no_grad():
            bad_cost = ~torch.isfinite(value.detach()).view(-1, B, value.shape[1]).all(-1)
            bad_g = ~torch.isfinite(g.detach()).reshape(-1, B, g[0].numel()).all(-1)
            bad = torch.stack([bad_cost.any(0), bad_g.any(0)], dim=-1).to(torch.int8)
            if bool(bad.any()):
                where = (
                    torch.arange(B, device=bad.device) if self.elements is None else self.elements
                )
                # elements may repeat (line-search candidates): a maximum, not an assignment
                index = where.view(-1, 1).expand(-1, 2)
                self.nonfinite.scatter_reduce_(0, index, bad, reduce="amax")

    def select_batch(self, index: Tensor) -> AugmentedCost | None:
        """The augmented cost of the elements ``index`` (k,), or None when the user's cost or
        constraints cannot be restricted safely (``restriction.restrictable``)."""
        batch = self.penalty.shape[0]
        cost = restrictable(self.cost.module, batch, index)
        constraints = restrictable(self.constraints.module, batch, index)
        if cost is None or constraints is None:
            return None
        with torch.inference_mode(False):  # ordinary tensors: the cost is differentiated
            multipliers = self.multipliers.index_select(0, index)
            penalty = self.penalty.index_select(0, index)
        elements = index if self.elements is None else self.elements[index]
        return AugmentedCost(
            CheckedCost(cost),
            CheckedConstraints(constraints, self.constraints.n_rows),
            multipliers,
            penalty,
            self.nonfinite,
            elements,
        )


class ALResult(NamedTuple):
    """Outcome of ``augmented_lagrangian``; x, u and free are time-major.

    Attributes:
        x: (T, B, n), u: (T, B, m) the solution.
        free: (T, B, m) the controls not held at a bound by the last box-DDP solve.
        values: (B, T, p) g at the solution.
        multipliers: (B, T, p) mu = max(0, lam + rho g) of the last solve.
        penalty: (B,) the last rho.
        outer_iterations: (B,) multiplier updates used.
        info: the per-element report (inner iterations summed, the final status).
    """

    x: Tensor
    u: Tensor
    free: Tensor
    values: Tensor
    multipliers: Tensor
    penalty: Tensor
    outer_iterations: Tensor
    info: SolverInfo


def _take(z: Tensor | None, rows: Tensor | None, dim: int) -> Any:
    return z if z is None or rows is None else z.index_select(dim, rows)


def _inner_solve(
    model: RestrictableModel,
    rows: Tensor,
    x_init: Tensor,
    u: Tensor,
    bounds: tuple[Tensor | None, Tensor | None],
    options: MPCOptions,
    kernels: Kernels,
) -> tuple[Tensor, Tensor, Tensor, SolverInfo]:
    """Box-DDP on the augmented cost for the elements ``rows`` (k,), from the controls u
    (T, B, m): their x (T, k, n), u (T, k, m), free mask (T, k, m) and report, as ordinary
    tensors. A model that cannot be restricted solves the whole batch, ``rows`` kept."""
    B = x_init.shape[0]
    lower, upper = bounds
    restricted = model if rows.numel() == B else model.restrict(rows, B)
    subset = None if restricted is None or rows.numel() == B else rows
    pick = rows if restricted is None else None
    sub = model if restricted is None else restricted
    with torch.inference_mode():
        result = box_ddp(
            sub,
            _take(x_init.detach(), subset, 0),
            _take(u, subset, 1).contiguous(),
            _take(lower, subset, 1),
            _take(upper, subset, 1),
            options,
            warn_regularization=False,
            kernels=kernels,
        )
    x_r, u_r = _take(result.x, pick, 1).clone(), _take(result.u, pick, 1).clone()
    free_r = _take(result.gains.free, pick, 1).clone()
    report = result.info.clone() if pick is None else result.info.index(pick).clone()
    return x_r, u_r, free_r, report


class _OuterUpdate(NamedTuple):
    """One multiplier update of k elements: their status code (k,), the new multipliers
    (k, T, p) and penalties (k,), the count of solves at the largest penalty (k,), and what
    decided them (k,)."""

    residual: Tensor
    violation: Tensor
    code: Tensor
    converged: Tensor
    nonfinite: Tensor
    infeasible: Tensor
    multipliers: Tensor
    penalty: Tensor
    at_limit: Tensor


def _outer_update(
    g: Tensor,
    lam: Tensor,
    rho: Tensor,
    report: SolverInfo,
    at_limit: Tensor,
    last_residual: Tensor,
    last_violation: Tensor,
    settings: tuple[float, float, float, float],
) -> _OuterUpdate:
    """The PHR multiplier update mu = max(0, lam + rho g) of k elements after their inner
    solve, with g (k, T, p) at its solution, and the decisions it allows: converged (inner
    solve solved and complementarity within tolerance), infeasible (a second solve at the
    largest penalty that did not halve the violation), and a larger penalty where the
    complementarity residual fell by less than 4x. ``settings``: the user's box-DDP
    tolerance, the constraint tolerance, the largest penalty and the penalty growth."""
    user_tol, tol, rho_max, growth = settings
    mu = torch.relu(lam + rho.view(-1, 1, 1) * g)
    residual = complementarity(g, mu)
    violation = torch.relu(g).amax(dim=(1, 2))
    codes = report.codes
    nonfinite = codes == _NONFINITE
    solved = (codes == _CONVERGED) | ((codes == _MAX_ITER) & (report.residual <= user_tol))
    converged = solved & (residual <= tol)
    # a second solve at the largest penalty, solved to the user's tol, that did not halve
    # the violation: the constraints cannot be met
    limit = torch.where(rho >= rho_max, at_limit + 1, 0)
    stuck = solved & (limit >= 2) & (violation > tol)
    stuck &= violation > 0.5 * last_violation
    infeasible = ~converged & ~nonfinite & stuck
    code = torch.where(solved, _MAX_ITER, codes.long())
    code = torch.where(converged, _CONVERGED, torch.where(infeasible, _INFEASIBLE, code))
    grow = ~converged & (residual > 0.25 * last_residual)
    new_rho = torch.where(grow, (rho * growth).clamp(max=rho_max), rho)
    multipliers = torch.where(nonfinite.view(-1, 1, 1), lam, mu)
    return _OuterUpdate(
        residual, violation, code, converged, nonfinite, infeasible, multipliers, new_rho, limit
    )


def augmented_lagrangian(
    make_model: Callable[[AugmentedCost], RestrictableModel],
    cost: CheckedCost,
    constraints: CheckedConstraints,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    multipliers: Tensor,
    options: MPCOptions,
    kernels: Kernels,
) -> ALResult:
    """Solve the constrained problem of every element by augmented-Lagrangian box-DDP.

    Args:
        make_model: the box-DDP ``Model`` of an augmented cost and the user's dynamics
            (``mpc.ModuleModel``); its ``restrict`` leaves finished elements out.
        cost: the user's cost; constraints: the user's constraints.
        x_init: (B, n) initial states.
        u_init: (T, B, m) warm start of the controls.
        lower, upper: (T, B, m) control bounds or None.
        multipliers: (B, T, p) warm start of the multipliers (>= 0).
        options: ``max_outer_iter``, ``constraint_tol``, ``penalty_*`` and box-DDP's own.
        kernels: the numerics' backend of box-DDP.
    """
    B, dtype, device = x_init.shape[0], x_init.dtype, x_init.device
    T, n = u_init.shape[0], x_init.shape[1]
    tol = options.constraint_tolerance(dtype)
    rho_max = options.penalty_limit(dtype)
    # box-DDP stops when its full step is below its tolerance, without taking it: after the
    # first solve, whose multiplier update may be all there is to do, the solves run at a
    # tolerance tightening towards one that the updates' steps exceed, for at most
    # _LATER_MAX_ITER iterations; a solve stopped there that reached the user's own
    # tolerance counts as solved
    user_tol = options.tolerance(dtype)
    final = min(user_tol, 0.1 * tol)

    def tighter(k: int) -> MPCOptions:
        return dataclasses.replace(
            options,
            tol=max(final, user_tol * 0.1 ** (k - 1)),
            max_iter=min(options.max_iter, _LATER_MAX_ITER),
        )

    lam = multipliers.detach().clone()
    rho = torch.full((B,), min(options.penalty_init, rho_max), dtype=dtype, device=device)
    x = torch.zeros(T, B, n, dtype=dtype, device=device)
    u = u_init.detach().clone()
    free = torch.ones_like(u, dtype=torch.bool)
    values = torch.zeros_like(lam)
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    outer = torch.zeros(B, dtype=torch.long, device=device)
    inner_residual = torch.full((B,), float("inf"), dtype=dtype, device=device)
    step_size = torch.zeros(B, dtype=dtype, device=device)
    status = torch.full((B,), _MAX_ITER, dtype=torch.int8, device=device)
    source = torch.zeros(B, dtype=torch.int8, device=device)
    last_residual = torch.full((B,), float("inf"), dtype=dtype, device=device)
    last_violation = torch.full((B,), float("inf"), dtype=dtype, device=device)
    at_limit = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for outer_iteration in range(options.max_outer_iter):
        rows = torch.nonzero(~done).flatten()
        if rows.numel() == 0:
            break
        augmented = AugmentedCost(cost, constraints, lam, rho)
        model = make_model(augmented)
        inner = options if outer_iteration == 0 else tighter(outer_iteration)
        x_r, u_r, free_r, report = _inner_solve(
            model, rows, x_init, u, (lower, upper), inner, kernels
        )
        x, u, free = (
            x.index_copy(1, rows, x_r),
            u.index_copy(1, rows, u_r),
            free.index_copy(1, rows, free_r),
        )
        with torch.no_grad():
            g = constraints(x.transpose(0, 1), u.transpose(0, 1)).index_select(0, rows)
        lam_r, rho_r = lam.index_select(0, rows), rho.index_select(0, rows)
        update = _outer_update(
            g,
            lam_r,
            rho_r,
            report,
            at_limit.index_select(0, rows),
            last_residual.index_select(0, rows),
            last_violation.index_select(0, rows),
            (user_tol, tol, rho_max, options.penalty_growth),
        )
        residual, violation, code = update.residual, update.violation, update.code
        converged, nonfinite, infeasible = update.converged, update.nonfinite, update.infeasible
        lam = lam.index_copy(0, rows, update.multipliers)
        rho = rho.index_copy(0, rows, update.penalty)
        at_limit = at_limit.index_copy(0, rows, update.at_limit)
        values = values.index_copy(0, rows, g)
        status = status.index_copy(0, rows, code.to(torch.int8))
        iterations = iterations.index_add(0, rows, report.iterations)
        outer = outer.index_add(0, rows, torch.ones_like(rows))
        inner_residual = inner_residual.index_copy(0, rows, report.residual)
        step_size = step_size.index_copy(0, rows, report.step_size)
        if report.nonfinite_source is not None:
            # the constraints' NaN reaches box-DDP through the augmented cost: name them
            # where they gave one and the user's cost did not
            record = augmented.nonfinite.index_select(0, rows)
            theirs = (report.nonfinite_source == SOURCE_COST) & (record[:, 1] > record[:, 0])
            blamed = torch.where(theirs, SOURCE_CONSTRAINTS, report.nonfinite_source.long())
            source = source.index_copy(0, rows, blamed.to(source.dtype))
        last_residual = last_residual.index_copy(0, rows, residual)
        last_violation = last_violation.index_copy(0, rows, violation)
        done = done.index_copy(0, rows, converged | nonfinite | infeasible)
    info = SolverInfo(
        iterations,
        status == _CONVERGED,
        inner_residual,
        step_size,
        backend=kernels.name,
        status=status,
        nonfinite_source=source,
    )
    return ALResult(x, u, free, values, lam, rho, outer, info)
