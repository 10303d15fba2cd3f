"""mpc.pytorch's ``delta_u``: a trust region on the change of the controls per iteration.

With a nominal u^k (B, T, m), iteration k solves the problem with the box tightened to

    max(u_lower, u^k - delta_u)  <=  u  <=  min(u_upper, u^k + delta_u)

so no control moves by more than delta_u in one iteration, as in mpc.pytorch, whose LQR
step clips both its box QPs and its rollout to that region. The iterations run without a
graph; each element stops on its own. A ``QuadCost`` with a ``LinDx`` is convex: its step is
the exact solution in the region (``lqr_solve``), and it has converged when that step moves
no control by more than tol * (1 + max |u|). Otherwise the step is one box-DDP iteration
(``mpc_policy.MPC`` with max_iter = 1), and an element has converged when box-DDP, started
at u^k in its region, finds u^k already a fixed point.

A fixed point under the trust region is one without it (the region is inactive where the
step is zero), so a converged element is then solved and differentiated by the plain native
solve (``dispatch.solve``, started at u^k), which returns the same point with the exact
implicit gradient. An element that has not converged after ``max_iter`` iterations keeps
its last iterate, detached, and is reported unconverged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from mpc_policy.compat.dispatch import NativeProblem, solve
from mpc_policy.options import MPCOptions
from mpc_policy.solution import Solution, SolverInfo

__all__ = ["solve_trust_region"]


def _region(bound: float | Tensor | None, centre: Tensor, radius: float, side: int) -> Tensor:
    """(B, T, m): the bound tightened to centre + side * radius (side -1 lower, +1 upper)."""
    edge = centre + side * radius
    if bound is None:
        return edge
    limit = torch.as_tensor(bound, dtype=centre.dtype, device=centre.device).detach()
    return torch.maximum(edge, limit) if side < 0 else torch.minimum(edge, limit)


def _detached(problem: NativeProblem) -> NativeProblem:
    """The problem without a graph to its tensors (modules are run under no_grad)."""
    lqr = None if problem.lqr is None else tuple(z.detach() for z in problem.lqr)
    bounds = [b.detach() if isinstance(b, Tensor) else b for b in (problem.lower, problem.upper)]
    return dataclasses.replace(
        problem,
        x_init=problem.x_init.detach(),
        lower=bounds[0],
        upper=bounds[1],
        lqr=lqr,  # type: ignore[arg-type]
    )


def _start(problem: NativeProblem) -> Tensor:
    """(B, T, m) the first nominal: the warm start (or zeros) projected onto the box."""
    x_init = problem.x_init
    shape = (x_init.shape[0], problem.horizon, problem.n_ctrl)
    u = torch.zeros(shape, dtype=x_init.dtype, device=x_init.device)
    if problem.u_init is not None:
        u = problem.u_init.detach().to(x_init.dtype).expand(shape).clone()
    for bound, side in ((problem.lower, -1), (problem.upper, 1)):
        if bound is not None:
            limit = torch.as_tensor(bound, dtype=u.dtype, device=u.device).detach()
            u = torch.maximum(u, limit) if side < 0 else torch.minimum(u, limit)
    return u


def solve_trust_region(problem: NativeProblem, options: dict[str, Any], delta_u: float) -> Solution:
    """Solve with per-iteration control changes of at most ``delta_u``.

    Args:
        problem: the native problem.
        options: ``MPCOptions`` fields; ``max_iter`` counts trust-region iterations.
        delta_u: the radius of the trust region (> 0).

    Returns:
        The ``Solution`` (x (B, T, n'), u (B, T, m), cost (B,), info): converged elements
        from the native solve with gradients, the others at their last iterate, detached.
    """
    convex = problem.lqr is not None
    tol = MPCOptions.from_kwargs(**options).tolerance(problem.x_init.dtype)
    quiet = {**options, "on_unconverged": "ignore"}
    step_options = quiet if convex else {**quiet, "max_iter": 1}
    fixed = _detached(problem)
    u = _start(fixed)
    B = u.shape[0]
    converged = torch.zeros(B, dtype=torch.bool, device=u.device)
    iterations = torch.zeros(B, dtype=torch.long, device=u.device)
    residual = torch.full((B,), float("inf"), dtype=u.dtype, device=u.device)
    step_size = torch.zeros(B, dtype=u.dtype, device=u.device)
    x = cost = None
    with torch.no_grad():
        for _ in range(options["max_iter"]):
            active = ~converged
            lower = _region(fixed.lower, u, delta_u, -1)
            upper = _region(fixed.upper, u, delta_u, 1)
            step = solve(fixed, step_options, lower, upper, u)
            change = _change(step.u, u)
            if convex:  # the exact step in the region barely moved: u is the optimum
                done, moved = change <= tol, active
            else:  # box-DDP started at u found it a fixed point without a step
                done = (step.info.iterations == 0) & step.info.converged
                moved = active & ~done
            take = active.view(B, 1, 1)
            u = torch.where(take, step.u, u)
            x = step.x if x is None else torch.where(take, step.x, x)
            cost = step.cost if cost is None else torch.where(active, step.cost, cost)
            iterations = iterations + moved.long()
            residual = torch.where(active, change, residual)
            step_size = torch.where(moved, step.info.step_size, step_size)
            converged = converged | (active & done)
            if bool(converged.all()):
                break
    # with the graph: a fixed point is confirmed (and differentiated) without a step, so one
    # box-DDP iteration is all a module problem needs; an LQR problem is solved exactly
    final = solve(problem, step_options, u_init=u)
    if convex:
        converged = converged | (_change(final.u.detach(), u) <= tol)
    else:  # the last iterate is a fixed point if box-DDP takes no step from it
        converged = (final.info.iterations == 0) & final.info.converged
    assert x is not None and cost is not None  # max_iter >= 1 (MPCOptions)
    keep = converged.view(B, 1, 1)
    residual = torch.where(converged, final.info.residual, residual)
    return Solution(
        torch.where(keep, final.x, x),
        torch.where(keep, final.u, u),
        torch.where(converged, final.cost, cost),
        SolverInfo(iterations, converged, residual, step_size),
    )


def _change(new: Tensor, old: Tensor) -> Tensor:
    """(B,) largest control change, relative to 1 + max |old| (the native residual)."""
    return (new - old).abs().amax(dim=(1, 2)) / (1.0 + old.abs().amax(dim=(1, 2)))
