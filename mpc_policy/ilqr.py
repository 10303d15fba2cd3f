"""Box-DDP (Tassa et al., 2014; the paper's Algorithm 2) with per-element line search.

Iterates, from a nominal trajectory tau_bar = (x_bar, u_bar):

    1. quadratize the cost and linearize the dynamics around tau_bar  (eqs. (12), (13));
    2. run the box-LQR backward recursion on that model              (``riccati``);
    3. roll the true dynamics out with u = u_bar + alpha k + K (x - x_bar), clamped to the
       box, for alpha = 1, decay, decay^2, ... until the true cost decreases;

until the full step (alpha = 1) on the linearized dynamics changes no control by more than
tol * (1 + max |u_bar|): a fixed point of the convex approximation (eq. (11)). That test
needs no call of the model, so the pass that confirms convergence costs no rollout. Every
batch element takes its own step size and stops on its own; a converged element's
trajectory is frozen.

The problem is given as a ``Model``: an LQR problem and a nonlinear cost/dynamics pair are
both models, so the bounded LQR layer and the nonlinear MPC share this loop.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from mpc_policy.backend import TORCH, Kernels
from mpc_policy.health import ddp_info, indefinite_rows, neutral_model, nonfinite_source
from mpc_policy.options import MPCOptions
from mpc_policy.riccati import Gains
from mpc_policy.rollout import Model, clamp, linear_step, rollout
from mpc_policy.solution import SolverInfo

__all__ = ["DDPResult", "Model", "box_ddp", "rollout"]

# Line-search candidates are rolled out together while the batch of all of them has at most
# this many rows (beyond it, arithmetic outweighs the tensor operations saved).
_CANDIDATE_ROWS = 1024
# Every step size is rolled out at once (full step included) while its batch of candidates
# has at most this many rows; beyond it the full step goes first, alone.
_ALL_CANDIDATES_ROWS = 320
# Newton steps (one more call of the model's curvature per step) pay where Gauss-Newton
# would take many more steps: an element takes them once its last step's contraction of the
# residual, kept up, would need more than this many steps to reach the tolerance (a
# swing-up pendulum with a heavy torque weight: rate 0.5, 15 steps in float64; the paper's
# pendulum in float32: rate 0.1 to 0.2, 2 to 4 steps; a Newton step costs about 1.4
# Gauss-Newton steps there).
_NEWTON_STEPS_LEFT = 5.0
# A step whose cost exceeds the last by less than this many machine epsilons of the cost's
# size, eps (1 + |cost|), is below the rounding of the cost and not refused.
_COST_ROUNDING = 10.0


class DDPResult(NamedTuple):
    """Outcome of ``box_ddp``: the trajectory (time-major), its cost, the last gains."""

    x: Tensor
    u: Tensor
    cost: Tensor
    gains: Gains
    info: SolverInfo


def _rows(z: Tensor, rows: Tensor | None) -> Tensor:
    """The batch elements ``rows`` of a time-major z (T, B, ...); all of them if None."""
    return z if rows is None else z.index_select(1, rows)


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
    """Gains of the moved elements (T, B, ...); the others keep ``gains`` (still exact)."""
    settings = {"regularization": options.regularization, "qp_max_iter": options.qp_max_iter}
    if gains is not None and kernels.name == "compiled":
        return kernels.backward_recursion(
            C, g, F, du_lower, du_upper, warn=warn, active=moved, out=gains, **settings
        )
    rows = None if gains is None or bool(moved.all()) else torch.nonzero(moved).squeeze(-1)
    fresh = kernels.backward_recursion(
        _rows(C, rows),
        _rows(g, rows),
        _rows(F, rows),
        None if du_lower is None else _rows(du_lower, rows),
        None if du_upper is None else _rows(du_upper, rows),
        warn=warn,
        **settings,
    )
    if gains is None or rows is None:
        return fresh
    return Gains(*(old.index_copy(1, rows, new) for old, new in zip(gains, fresh)))


class _CandidateCosts:
    """Costs of line-search candidates, in one call of the cost where the model allows.

    The L candidates of B elements are the rows l B + b of one batch of L B problems (the
    solver's row layout, row r is element r mod B), costed by the model restricted to
    ``arange(B)`` repeated L times; a model that cannot be restricted is costed once per
    candidate. Built once per solve, on first use.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.tiled: dict[int, Model | None] = {}

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """(L, B) costs of candidate trajectories x (L, T, B, n), u (L, T, B, m)."""
        L, T, B = x.shape[:3]
        if L not in self.tiled:
            restrict = getattr(self.model, "restrict", None)
            rows = torch.arange(B, device=x.device).repeat(L)
            self.tiled[L] = restrict(rows, B) if callable(restrict) else None
        tiled = self.tiled[L]
        if tiled is None:
            return torch.stack([self.model.total_cost(x[i], u[i]) for i in range(L)])
        rows_x = x.transpose(0, 1).reshape(T, L * B, x.shape[-1])
        rows_u = u.transpose(0, 1).reshape(T, L * B, u.shape[-1])
        return tiled.total_cost(rows_x, rows_u).view(L, B)


def _refuse(
    refused: Tensor, stepping: Tensor, gauss_newton: Tensor, stalled: Tensor
) -> tuple[Tensor, Tensor]:
    """The elements ``refused`` (B,) by every step size: a Newton step (``stepping``) is
    retried as Gauss-Newton, a Gauss-Newton element is stuck where it is. Returns the new
    (gauss_newton, stalled) masks."""
    return gauss_newton | (refused & stepping), stalled | (refused & ~stepping)


def _first_decrease(
    candidates: tuple[Tensor, Tensor, Tensor],
    alphas: Tensor,
    eligible: Tensor,
    threshold: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The largest step whose cost is below the threshold, per element.

    Args:
        candidates: x (L, T, B, n), u (L, T, B, m) and costs (L, B) of L step sizes.
        alphas: (L,) the step sizes, largest first.
        eligible: (B,) elements that may take a step.
        threshold: (B,) the cost a step must not exceed.

    Returns:
        found (B,), and for the found elements the chosen x (T, B, n), u (T, B, m),
        cost (B,) and step size (B,) (values elsewhere are those of some candidate).
    """
    x_try, u_try, costs = candidates
    B = costs.shape[1]
    ok = eligible.unsqueeze(0) & (costs.detach() <= threshold.unsqueeze(0))
    found = ok.any(0)
    first = torch.argmax(ok.to(torch.uint8), dim=0)
    index = first.view(1, 1, B, 1)
    chosen_x = torch.take_along_dim(x_try, index, dim=0).squeeze(0)
    chosen_u = torch.take_along_dim(u_try, index, dim=0).squeeze(0)
    chosen_cost = torch.take_along_dim(costs, first.view(1, B), dim=0).squeeze(0)
    return found, chosen_x, chosen_u, chosen_cost, alphas[first]


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
    element's gains would come out the same. The full step is rolled out first (it decides
    convergence and is accepted most of the time); the elements whose cost it does not
    decrease try the smaller steps, all at once for small batches (one rollout of L
    candidates costs about as many tensor operations as one rollout) and one after another
    for large ones.

    Args:
        model: the problem (cost, dynamics and their local models).
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial nominal controls (projected onto the box).
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.
        options: solver options (iterations, tolerance, line search).
        warn_regularization: warn when a Q_uu block needs regularizing.
        kernels: the numerics' backend (``mpc_policy.backend.select``).
        newton_state: (B,) the elements taking Newton steps, (B,) those that fell back to
            Gauss-Newton and (B,) the last residuals (a part-batch solve continues the whole
            batch's); None for a fresh solve.

    Returns:
        The final trajectory, its cost, the gains of the last backward pass (at the final
        trajectory of every converged element) and the per-element report.
    """
    B = x_init.shape[0]
    device, dtype = x_init.device, x_init.dtype
    tol = options.tolerance(dtype)
    eps = torch.finfo(dtype).eps
    x_bar, u_bar = rollout(model, x_init, clamp(u_init, lower, upper), kernels=kernels)
    cost_bar = model.total_cost(x_bar, u_bar)
    # an element whose trajectory, cost or local model turns non-finite is frozen
    source, any_nonfinite = nonfinite_source((x_bar,), (cost_bar,))
    nonfinite = source > 0
    alphas = options.line_search_decay ** torch.arange(
        options.max_line_search, dtype=dtype, device=device
    )
    together = B * (options.max_line_search - 1) <= _CANDIDATE_ROWS
    candidate_costs = _CandidateCosts(model)

    converged = torch.zeros(B, dtype=torch.bool, device=device)
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    step_size = torch.zeros(B, dtype=dtype, device=device)
    residual = torch.full((B,), float("inf"), dtype=dtype, device=device)
    stalled = torch.zeros(B, dtype=torch.bool, device=device)
    gains: Gains | None = None
    restrict = getattr(model, "restrict", None)
    affine = getattr(model, "affine", None) is not None
    local_model: tuple[Tensor, Tensor] | None = None  # the last pass's C and F
    # Newton steps near a solution: the Hessian of the Lagrangian in the backward pass
    curvature = getattr(model, "curvature", None)
    if affine or options.newton_residual <= 0 or not callable(curvature):
        curvature = None
    if newton_state is None:
        no_rows = torch.zeros(B, dtype=torch.bool, device=device)
        newton_state = (
            no_rows,
            no_rows,
            torch.full((B,), float("inf"), dtype=dtype, device=device),
        )
    newton, gauss_newton, last_residual = newton_state
    # whether the next backward pass has Newton elements (decided with the loop's one sync)
    newton_next = curvature is not None and bool((newton & ~gauss_newton).any())
    for sweep in range(options.max_iter + 1):
        moving = ~(converged | stalled | nonfinite)
        if (
            local_model is not None
            and gains is not None
            and B > 1
            and callable(restrict)
            and (sweep < options.max_iter)
        ):
            rows = torch.nonzero(moving).flatten()
            sub_model = restrict(rows, B) if 0 < rows.numel() <= B // 2 else None
            if sub_model is not None:
                # the rest of the solve runs on the elements still moving, with the cost
                # and the dynamics called on them alone: each element's answer is the one
                # it gets in the whole batch, and the frozen ones stop paying for it
                sub = box_ddp(
                    sub_model,
                    x_init.index_select(0, rows),
                    u_bar.index_select(1, rows),
                    None if lower is None else lower.index_select(1, rows),
                    None if upper is None else upper.index_select(1, rows),
                    dataclasses.replace(options, max_iter=options.max_iter - sweep),
                    warn_regularization,
                    kernels,
                    (
                        newton.index_select(0, rows),
                        gauss_newton.index_select(0, rows),
                        residual.index_select(0, rows),
                    ),
                )
                indefinite = indefinite_rows(
                    *local_model, gains, ~stalled & ~nonfinite & ~moving, options.regularization
                )
                info = ddp_info(
                    iterations,
                    converged,
                    stalled,
                    source,
                    indefinite,
                    residual,
                    step_size,
                    kernels.name,
                )
                # an element the part-batch solve finds converged at once took its last
                # step here: keep that step's size
                untouched = sub.info.iterations == 0
                sub.info.step_size.copy_(
                    torch.where(untouched, step_size.index_select(0, rows), sub.info.step_size)
                )
                sub.info.iterations += iterations.index_select(0, rows)
                return DDPResult(
                    x_bar.index_copy(1, rows, sub.x),
                    u_bar.index_copy(1, rows, sub.u),
                    cost_bar.index_copy(0, rows, sub.cost),
                    Gains(*(old.index_copy(1, rows, new) for old, new in zip(gains, sub.gains))),
                    info.scatter(rows, sub.info),
                )
        C, g = model.quadratize(x_bar, u_bar)
        F = model.linearize(x_bar, u_bar)
        found, new = nonfinite_source((F,), (C, g))
        if new:
            source = torch.where(nonfinite, source, found)
            nonfinite, any_nonfinite = source > 0, True
        if any_nonfinite:
            C, g, F = neutral_model(C, g, F, nonfinite)
        local_model = (C, F)
        du_lower = None if lower is None else lower - u_bar
        du_upper = None if upper is None else upper - u_bar
        # converged, stalled and non-finite elements are frozen: their last gains are
        # still exact (or of no use)
        moved = ~(converged | stalled | nonfinite)
        stepping = newton & moved & ~gauss_newton
        if curvature is not None and newton_next:
            H = curvature(x_bar, u_bar, kernels.costates_from_gradient(g, F))
            if H is None:  # the model takes no Newton steps
                curvature, stepping = None, stepping & False
            else:
                C = C.clone()
                C[:-1] += torch.where(stepping.view(1, -1, 1, 1), H, 0.0)
        gains = _backward_pass(
            kernels, C, g, F, du_lower, du_upper, gains, moved, options, warn_regularization
        )
        # the fixed-point test on the full step of the convex approximation (eq. (11)):
        # the step on the linearized dynamics, without calling the model
        if affine:
            x_full, u_full = rollout(model, x_init, u_bar, x_bar, gains, 1.0, lower, upper, kernels)
            u_model = u_full
        else:
            u_model = linear_step(kernels, F, u_bar, gains, lower, upper)
        scale = 1.0 + u_bar.detach().abs().amax(dim=(0, 2))
        residual = (u_model - u_bar).detach().abs().amax(dim=(0, 2)) / scale
        converged = converged | ((residual <= tol) & ~nonfinite)
        if curvature is not None:
            # Newton steps for an element near the solution that Gauss-Newton brings in
            # slowly, and from then on while it stays near
            rate = residual / last_residual
            steps_left = torch.log(tol / residual) / torch.log(rate)
            slow = (rate >= 1.0) | (steps_left > _NEWTON_STEPS_LEFT)
            near = residual <= options.newton_residual
            newton = near & ~gauss_newton & (newton | slow)
            last_residual = residual
        pending = ~converged & ~stalled & ~nonfinite & (iterations < options.max_iter)
        if curvature is None:
            any_pending = bool(pending.any())
        else:
            any_pending, newton_next = torch.stack(
                [pending.any(), (newton & pending).any()]
            ).tolist()
        if not any_pending:
            break
        iterations = iterations + pending.long()
        # a step whose cost change is below the rounding of the cost is not refused
        threshold = cost_bar.detach() + _COST_ROUNDING * eps * (1.0 + cost_bar.detach().abs())
        if B * options.max_line_search <= _ALL_CANDIDATES_ROWS and not affine and B > 1:
            # every step size in one rollout and one cost call: the tensor operations of a
            # single rollout, and no second rollout when some element refuses the full step
            # (a lone element mostly takes the full step: it rolls that out alone, below)
            x_try, u_try = rollout(
                model, x_init, u_bar, x_bar, gains, alphas, lower, upper, kernels
            )
            trial = (x_try, u_try, candidate_costs(x_try, u_try))
            accepted, x_step, u_step, cost_step, accepted_alpha = _first_decrease(
                trial, alphas, pending, threshold
            )
            pick = accepted.view(1, B, 1)
            gauss_newton, stalled = _refuse(pending & ~accepted, stepping, gauss_newton, stalled)
            step_size = torch.where(pending, torch.where(accepted, accepted_alpha, 0.0), step_size)
            x_bar = torch.where(pick, x_step, x_bar)
            u_bar = torch.where(pick, u_step, u_bar)
            cost_bar = torch.where(accepted, cost_step, cost_bar)
            continue
        if not affine:
            x_full, u_full = rollout(model, x_init, u_bar, x_bar, gains, 1.0, lower, upper, kernels)
        cost_full = model.total_cost(x_full, u_full)
        accepted = pending & (cost_full.detach() <= threshold)
        pick = accepted.view(1, B, 1)
        new_x = torch.where(pick, x_full, x_bar)
        new_u = torch.where(pick, u_full, u_bar)
        new_cost = torch.where(accepted, cost_full, cost_bar)
        accepted_alpha = accepted.to(dtype)
        rest = pending & ~accepted
        if options.max_line_search > 1 and bool(rest.any()):
            if together:
                x_try, u_try = rollout(
                    model, x_init, u_bar, x_bar, gains, alphas[1:], lower, upper, kernels
                )
                trial = (x_try, u_try, candidate_costs(x_try, u_try))
                found, chosen_x, chosen_u, chosen_cost, chosen_alpha = _first_decrease(
                    trial, alphas[1:], rest, threshold
                )
                pick = found.view(1, B, 1)
                new_x = torch.where(pick, chosen_x, new_x)
                new_u = torch.where(pick, chosen_u, new_u)
                new_cost = torch.where(found, chosen_cost, new_cost)
                accepted_alpha = torch.where(found, chosen_alpha, accepted_alpha)
                accepted = accepted | found
            else:
                for j in range(1, options.max_line_search):
                    alpha = options.line_search_decay**j
                    x_try, u_try = rollout(
                        model, x_init, u_bar, x_bar, gains, alpha, lower, upper, kernels
                    )
                    cost_try = model.total_cost(x_try, u_try)
                    ok = rest & ~accepted & (cost_try.detach() <= threshold)
                    pick = ok.view(1, B, 1)
                    new_x = torch.where(pick, x_try, new_x)
                    new_u = torch.where(pick, u_try, new_u)
                    new_cost = torch.where(ok, cost_try, new_cost)
                    accepted_alpha = torch.where(ok, alphas[j], accepted_alpha)
                    accepted = accepted | ok
                    if bool(accepted[pending].all()):
                        break
        gauss_newton, stalled = _refuse(pending & ~accepted, stepping, gauss_newton, stalled)
        step_size = torch.where(pending, accepted_alpha, step_size)
        x_bar, u_bar, cost_bar = new_x, new_u, new_cost

    assert gains is not None
    # a fixed point is a minimum only with positive curvature on the free controls; an
    # element still moving without it is heading for no minimizer (a cost unbounded below)
    indefinite = indefinite_rows(C, F, gains, ~stalled & ~nonfinite, options.regularization)
    info = ddp_info(
        iterations, converged, stalled, source, indefinite, residual, step_size, kernels.name
    )
    return DDPResult(x_bar, u_bar, cost_bar, gains, info)
