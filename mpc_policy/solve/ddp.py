"""Box-DDP (Tassa et al., 2014; the paper's Algorithm 2) with per-element line search.

Iterates, from a nominal trajectory tau_bar = (x_bar, u_bar):

    1. quadratize the cost and linearize the dynamics around tau_bar  (eqs. (12), (13));
    2. run the box-LQR backward recursion on that model              (``riccati``);
    3. roll the true dynamics out with u = u_bar + alpha k + K (x - x_bar), clamped to the
       box, for alpha = 1, decay, decay^2, ... until the true cost decreases
       (``line_search``);

until the full step (alpha = 1) on the linearized dynamics changes no control by more than
tol * (1 + max |u_bar|): a fixed point of the convex approximation (eq. (11)). That test
needs no call of the model, so the pass that confirms convergence costs no rollout. Every
batch element takes its own step size and stops on its own; a converged element's
trajectory is frozen.

The loop reads as its phases: ``_local_model`` -> ``NewtonSwitch.curvature_terms`` (``newton``) ->
``_backward_pass`` -> ``_fixed_point_test`` -> ``NewtonSwitch.update`` -> ``LineSearch`` ->
freeze (the masks), with the part-batch continuation (``_continue_on_rows``) as its own unit.

The problem is given as a ``Model``: an LQR problem and a nonlinear cost/dynamics pair are
both models, so the bounded LQR layer and the nonlinear MPC share this loop.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from mpc_policy._warnings import warn_regularized
from mpc_policy.numerics.riccati import Gains
from mpc_policy.options import MPCOptions
from mpc_policy.solution import SolverInfo
from mpc_policy.solve.backend import TORCH, Kernels
from mpc_policy.solve.health import ddp_info, indefinite_rows, neutral_model, nonfinite_source
from mpc_policy.solve.line_search import LineSearch, refuse
from mpc_policy.solve.newton import NewtonSwitch
from mpc_policy.solve.rollout import Model, clamp, linear_step, rollout

__all__ = ["DDPResult", "Model", "box_ddp", "rollout"]


class DDPResult(NamedTuple):
    """Outcome of ``box_ddp``: the trajectory (time-major), its cost, the last gains."""

    x: Tensor
    u: Tensor
    cost: Tensor
    gains: Gains
    info: SolverInfo


@dataclasses.dataclass
class _Iterate:
    """The loop's state: the nominal trajectory x (T, B, n), u (T, B, m), its cost (B,), the
    last gains and local model, and each element's progress (B,)."""

    x: Tensor
    u: Tensor
    cost: Tensor
    source: Tensor  # where a non-finite value came from (0: nowhere)
    nonfinite: Tensor  # source > 0, kept with it
    any_nonfinite: bool
    converged: Tensor
    stalled: Tensor
    iterations: Tensor
    step_size: Tensor
    residual: Tensor
    gains: Gains | None = None
    local_model: tuple[Tensor, Tensor] | None = None  # the last pass's C and F

    @property
    def frozen(self) -> Tensor:
        """(B,) converged, stalled and non-finite elements: their last gains are still exact
        (or of no use), and their trajectory stays as it is."""
        return self.converged | self.stalled | self.nonfinite


def _start(
    model: Model,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    kernels: Kernels,
) -> _Iterate:
    """The first nominal trajectory: u_init projected onto the box, rolled out."""
    B, dtype, device = x_init.shape[0], x_init.dtype, x_init.device
    x, u = rollout(model, x_init, clamp(u_init, lower, upper), kernels=kernels)
    cost = model.total_cost(x, u)
    # an element whose trajectory, cost or local model turns non-finite is frozen
    source, any_nonfinite = nonfinite_source((x,), (cost,))
    no = torch.zeros(B, dtype=torch.bool, device=device)
    return _Iterate(
        x,
        u,
        cost,
        source,
        source > 0,
        any_nonfinite,
        converged=no,
        stalled=no,
        iterations=torch.zeros(B, dtype=torch.long, device=device),
        step_size=torch.zeros(B, dtype=dtype, device=device),
        residual=torch.full((B,), float("inf"), dtype=dtype, device=device),
    )


def _local_model(model: Model, it: _Iterate) -> tuple[Tensor, Tensor, Tensor]:
    """C (T, B, d, d), g (T, B, d), F (T-1, B, n, d) around the nominal trajectory
    (eqs. (12), (13)); an element whose model turns non-finite is frozen with a neutral one."""
    C, g = model.quadratize(it.x, it.u)
    F = model.linearize(it.x, it.u)
    found, new = nonfinite_source((F,), (C, g))
    if new:
        it.source = torch.where(it.nonfinite, it.source, found)
        it.nonfinite, it.any_nonfinite = it.source > 0, True
    if it.any_nonfinite:
        C, g, F = neutral_model(C, g, F, it.nonfinite)
    it.local_model = (C, F)
    return C, g, F


def _backward_pass(
    kernels: Kernels,
    C: Tensor,
    g: Tensor,
    F: Tensor,
    du_lower: Tensor | None,
    du_upper: Tensor | None,
    gains: Gains | None,
    moved: Tensor,
    options: MPCOptions,
    warn: bool,
) -> Gains:
    """Gains of the moved elements (T, B, ...); the others keep ``gains`` (still exact).
    ``warn``: warn about the regularized Q_uu of the moved elements (box-DDP on a nonconvex
    problem meets indefinite Q_uu routinely far from the solution and does not warn)."""
    settings = {"regularization": options.regularization, "qp_max_iter": options.qp_max_iter}
    if gains is not None and kernels.name == "compiled":
        updated = kernels.backward_recursion(
            C, g, F, du_lower, du_upper, active=moved, out=gains, **settings
        )
        if warn:
            warn_regularized(updated.shift, moved)
        return updated
    rows = None if gains is None or bool(moved.all()) else torch.nonzero(moved).squeeze(-1)

    def pick(z: Tensor) -> Tensor:
        return z if rows is None else z.index_select(1, rows)

    fresh = kernels.backward_recursion(
        pick(C),
        pick(g),
        pick(F),
        None if du_lower is None else pick(du_lower),
        None if du_upper is None else pick(du_upper),
        **settings,
    )
    if warn:
        warn_regularized(fresh.shift, None)
    if gains is None or rows is None:
        return fresh
    return Gains(*(old.index_copy(1, rows, new) for old, new in zip(gains, fresh)))


def _fixed_point_test(it: _Iterate, u_full: Tensor, tol: float) -> None:
    """The fixed-point test on the full step u_full (T, B, m) of the convex approximation
    (eq. (11)): no control moves by more than tol * (1 + max |u_bar|)."""
    scale = 1.0 + it.u.detach().abs().amax(dim=(0, 2))
    it.residual = (u_full - it.u).detach().abs().amax(dim=(0, 2)) / scale
    it.converged = it.converged | ((it.residual <= tol) & ~it.nonfinite)


def _report(
    it: _Iterate, C: Tensor, F: Tensor, left: Tensor, options: MPCOptions, kernels: Kernels
) -> SolverInfo:
    """The per-element report of the iterate, with the local model C, F of its last gains.

    A fixed point is a minimum only with positive curvature on the free controls; an
    element still moving without it is heading for no minimizer (a cost unbounded below):
    INDEFINITE. The elements ``left`` (B,) (those a part-batch solve takes on) are not
    tested here.
    """
    assert it.gains is not None
    candidates = ~it.stalled & ~it.nonfinite & ~left
    indefinite = indefinite_rows(C, F, it.gains, candidates, options.regularization)
    return ddp_info(
        it.iterations,
        it.converged,
        it.stalled,
        it.source,
        indefinite,
        it.residual,
        it.step_size,
        kernels.name,
    )


def _continue_on_rows(
    sub_model: Model,
    it: _Iterate,
    rows: Tensor,
    switch: NewtonSwitch,
    x_init: Tensor,
    bounds: tuple[Tensor | None, Tensor | None],
    options: MPCOptions,
    warn_regularization: bool,
    kernels: Kernels,
) -> DDPResult:
    """The whole batch's result once the rest of the solve ran on the elements ``rows`` (k,)
    alone: ``box_ddp`` of ``sub_model`` (the model restricted to them) from their nominal
    trajectory with ``options.max_iter`` iterations left, continuing their Newton state."""
    lower, upper = bounds
    sub = box_ddp(
        sub_model,
        x_init.index_select(0, rows),
        it.u.index_select(1, rows),
        None if lower is None else lower.index_select(1, rows),
        None if upper is None else upper.index_select(1, rows),
        options,
        warn_regularization,
        kernels,
        (
            switch.newton.index_select(0, rows),
            switch.gauss_newton.index_select(0, rows),
            it.residual.index_select(0, rows),
        ),
    )
    assert it.local_model is not None and it.gains is not None
    info = _report(it, *it.local_model, it.frozen, options, kernels)
    # an element the part-batch solve finds converged at once took its last step here: keep
    # that step's size
    untouched = sub.info.iterations == 0
    sub.info.step_size.copy_(
        torch.where(untouched, it.step_size.index_select(0, rows), sub.info.step_size)
    )
    sub.info.iterations += it.iterations.index_select(0, rows)
    return DDPResult(
        it.x.index_copy(1, rows, sub.x),
        it.u.index_copy(1, rows, sub.u),
        it.cost.index_copy(0, rows, sub.cost),
        Gains(*(old.index_copy(1, rows, new) for old, new in zip(it.gains, sub.gains))),
        info.scatter(rows, sub.info),
    )


def box_ddp(
    model: Model,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    options: MPCOptions,
    warn_regularization: bool = True,
    kernels: Kernels = TORCH,
    newton_state: tuple[Tensor, Tensor, Tensor] | None = None,
) -> DDPResult:
    """Solve a box-constrained control problem by box-DDP, each element on its own.

    Only the elements that moved since their last backward pass get a new one: a frozen
    element's gains would come out the same. Once at most half of the batch still moves, the
    rest of the solve runs on those elements alone, where the model can be restricted.

    Args:
        model: the problem (cost, dynamics and their local models).
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial nominal controls (projected onto the box).
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.
        options: solver options (iterations, tolerance, line search).
        warn_regularization: warn when a Q_uu block needs regularizing.
        kernels: the numerics' backend (``mpc_policy.solve.backend.select``).
        newton_state: (B,) the elements taking Newton steps, (B,) those that fell back to
            Gauss-Newton and (B,) the last residuals (a part-batch solve continues the whole
            batch's); None for a fresh solve.

    Returns:
        The final trajectory, its cost, the gains of the last backward pass (at the final
        trajectory of every converged element) and the per-element report.
    """
    B = x_init.shape[0]
    tol = options.tolerance(x_init.dtype)
    restrict = getattr(model, "restrict", None)
    affine = getattr(model, "affine", None) is not None
    it = _start(model, x_init, u_init, lower, upper, kernels)
    switch = NewtonSwitch.start(model, options, affine, newton_state, x_init)
    line_search = LineSearch(model, x_init, lower, upper, options, kernels, affine)
    for sweep in range(options.max_iter + 1):
        if it.local_model is not None and B > 1 and callable(restrict) and sweep < options.max_iter:
            rows = torch.nonzero(~it.frozen).flatten()
            sub_model = restrict(rows, B) if 0 < rows.numel() <= B // 2 else None
            if sub_model is not None:
                # the rest of the solve runs on the elements still moving, with the cost
                # and the dynamics called on them alone: each element's answer is the one
                # it gets in the whole batch, and the frozen ones stop paying for it
                rest = dataclasses.replace(options, max_iter=options.max_iter - sweep)
                return _continue_on_rows(
                    sub_model,
                    it,
                    rows,
                    switch,
                    x_init,
                    (lower, upper),
                    rest,
                    warn_regularization,
                    kernels,
                )
        C, g, F = _local_model(model, it)
        moved = ~it.frozen  # converged, stalled and non-finite elements are frozen
        stepping, C = switch.curvature_terms(it.x, it.u, C, g, F, moved, kernels)
        du_lower = None if lower is None else lower - it.u
        du_upper = None if upper is None else upper - it.u
        it.gains = _backward_pass(
            kernels, C, g, F, du_lower, du_upper, it.gains, moved, options, warn_regularization
        )
        full_step = None
        if affine:  # the full step's rollout is exact: it serves the line search too
            full_step = rollout(model, x_init, it.u, it.x, it.gains, 1.0, lower, upper, kernels)
            u_full = full_step[1]
        else:  # on the linearized dynamics, without calling the model
            u_full = linear_step(kernels, F, it.u, it.gains, lower, upper)
        _fixed_point_test(it, u_full, tol)
        switch.update(it.residual, tol, options)
        pending = ~it.frozen & (it.iterations < options.max_iter)
        if not switch.pending(pending):
            break
        it.iterations = it.iterations + pending.long()
        step = line_search(
            it.x, it.u, it.cost, it.gains, pending, options.cost_threshold(it.cost), full_step
        )
        switch.gauss_newton, it.stalled = refuse(
            pending & ~step.accepted, stepping, switch.gauss_newton, it.stalled
        )
        it.step_size = torch.where(pending, step.alpha, it.step_size)
        it.x, it.u, it.cost = step.x, step.u, step.cost

    assert it.gains is not None
    info = _report(it, C, F, torch.zeros_like(it.converged), options, kernels)
    return DDPResult(it.x, it.u, it.cost, it.gains, info)
