"""A trust region on the change of the controls per iteration (mpc.pytorch's ``delta_u``).

With a nominal u^k (B, T, m), iteration k solves the problem with the box tightened to

    max(u_lower, u^k - delta_u)  <=  u  <=  min(u_upper, u^k + delta_u)

so no control moves by more than delta_u in one iteration. The iterations run without a
graph; each element stops on its own. ``lqr_trust_region``: the problem is convex, each step
is its exact solution in the region (``lqr_solve``), and an element has converged when that
step moves no control by more than tol * (1 + max |u|). ``mpc_trust_region``: each step is one
box-DDP iteration (``MPC`` with max_iter = 1), and an element has converged when box-DDP,
started at u^k in its region, finds u^k already a fixed point.

A fixed point under the trust region is one without it (the region is inactive where the
step is zero), so a converged element is then solved and differentiated by the plain solve
(started at u^k), which returns the same point with the exact implicit gradient. An element
that has not converged after ``max_iter`` iterations keeps its last iterate, detached, and is
reported unconverged (the ``on_unconverged`` policy applies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.lqr import lqr_solve
from mpc_policy.mpc import MPC
from mpc_policy.options import MPCOptions
from mpc_policy.problem.validation import expand_bound
from mpc_policy.solution import Solution, SolverInfo

__all__ = ["lqr_trust_region", "mpc_trust_region"]

Bound = float | Tensor | None
# a solve within the bounds (lower, upper) from the controls u (B, T, m)
Step = Callable[[Bound, Bound, Tensor], Solution]


def lqr_trust_region(
    x_init: Tensor,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    u_lower: Bound,
    u_upper: Bound,
    delta_u: float,
    u_init: Tensor | None = None,
    **options: Any,
) -> Solution:
    """``lqr_solve`` with per-iteration control changes of at most ``delta_u``.

    Args:
        x_init, C, c, F, f, u_lower, u_upper: as for ``lqr_solve``.
        delta_u: the radius of the trust region (> 0).
        u_init: (B, T, m) first nominal (projected onto the box); zeros if None.
        **options: ``MPCOptions`` fields; ``max_iter`` counts trust-region iterations.

    Returns:
        The ``Solution``: converged elements with the gradient of ``lqr_solve``, the others at
        their last iterate, detached.
    """
    opts = MPCOptions.from_kwargs(**options)
    quiet = {**options, "on_unconverged": "ignore"}
    x0, C0, c0, F0, f0 = (z.detach() for z in (x_init, C, c, F, f))

    def step(lower: Bound, upper: Bound, u: Tensor) -> Solution:
        return lqr_solve(x0, C0, c0, F0, f0, lower, upper, **quiet)

    def final(u: Tensor) -> Solution:
        return lqr_solve(x_init, C, c, F, f, u_lower, u_upper, **quiet)

    shape = (x_init.shape[0], C.shape[-3], C.shape[-1] - x_init.shape[1])
    return _iterate(step, final, x_init, shape, (u_lower, u_upper), u_init, delta_u, opts, True)


def mpc_trust_region(
    controller: MPC,
    x_init: Tensor,
    cost: nn.Module,
    dynamics: nn.Module,
    delta_u: float,
    u_init: Tensor | None = None,
) -> Solution:
    """``controller(x_init, cost, dynamics, u_init)`` with per-iteration control changes of at
    most ``delta_u``.

    Args:
        controller: the ``MPC`` (its bounds and options; ``max_iter`` counts trust-region
            iterations); without ``constraints``.
        x_init: (B, n) initial states.
        cost, dynamics: as for ``MPC``.
        delta_u: the radius of the trust region (> 0).
        u_init: (B, T, m) first nominal (projected onto the box); zeros if None.

    Returns:
        The ``Solution``: converged elements with the controller's gradient at the fixed point,
        the others at their last iterate, detached.
    """
    if controller.constraints is not None:
        raise ValueError("controller: expected an MPC without constraints for a trust region")
    one_step = MPCOptions.from_kwargs(controller.options, max_iter=1, on_unconverged="ignore")

    def solver(lower: Bound, upper: Bound) -> MPC:
        one = MPC(controller.n_state, controller.n_ctrl, controller.horizon, lower, upper)
        one.options = one_step
        return one

    def step(lower: Bound, upper: Bound, u: Tensor) -> Solution:
        return solver(lower, upper)(x_init.detach(), cost, dynamics, u)

    def final(u: Tensor) -> Solution:
        return solver(controller.u_lower, controller.u_upper)(x_init, cost, dynamics, u)

    shape = (x_init.shape[0], controller.horizon, controller.n_ctrl)
    bounds = (controller.u_lower, controller.u_upper)
    return _iterate(step, final, x_init, shape, bounds, u_init, delta_u, controller.options, False)


def _change(new: Tensor, old: Tensor) -> Tensor:
    """(B,) largest control change, relative to 1 + max |old| (the native residual)."""
    return (new - old).abs().amax(dim=(1, 2)) / (1.0 + old.abs().amax(dim=(1, 2)))


def _iterate(
    step: Step,
    final: Callable[[Tensor], Solution],
    x_init: Tensor,
    shape: tuple[int, int, int],
    bounds: tuple[Bound, Bound],
    u_init: Tensor | None,
    delta_u: float,
    opts: MPCOptions,
    convex: bool,
) -> Solution:
    """The trust-region iterations (module docstring), then the solve with the graph."""
    if not float(delta_u) > 0:
        raise ValueError(f"delta_u: expected a positive float, received {delta_u!r}")
    B, T, m = shape
    like = x_init.detach()
    box = [expand_bound(name, b, B, T, m, like) for name, b in zip(("u_lower", "u_upper"), bounds)]
    box = [None if b is None else b.detach() for b in box]
    u = like.new_zeros(shape) if u_init is None else u_init.detach().to(like.dtype).expand(shape)
    u = u if box[0] is None else torch.maximum(u, box[0])
    u = u if box[1] is None else torch.minimum(u, box[1])
    tol = opts.tolerance(like.dtype)
    converged = torch.zeros(B, dtype=torch.bool, device=u.device)
    iterations = torch.zeros(B, dtype=torch.long, device=u.device)
    residual = torch.full((B,), float("inf"), dtype=u.dtype, device=u.device)
    step_size = torch.zeros(B, dtype=u.dtype, device=u.device)
    x = cost = None
    with torch.no_grad():
        for _ in range(opts.max_iter):
            active = ~converged
            lower = u - delta_u if box[0] is None else torch.maximum(u - delta_u, box[0])
            upper = u + delta_u if box[1] is None else torch.minimum(u + delta_u, box[1])
            new = step(lower, upper, u)
            change = _change(new.u, u)
            if convex:  # the exact step in the region barely moved: u is the optimum
                done, moved = change <= tol, active
            else:  # box-DDP started at u found it a fixed point without a step
                done = (new.info.iterations == 0) & new.info.converged
                moved = active & ~done
            take = active.view(B, 1, 1)
            u = torch.where(take, new.u, u)
            x = new.x if x is None else torch.where(take, new.x, x)
            cost = new.cost if cost is None else torch.where(active, new.cost, cost)
            iterations = iterations + moved.long()
            residual = torch.where(active, change, residual)
            step_size = torch.where(moved, new.info.step_size, step_size)
            converged = converged | (active & done)
            if bool(converged.all()):
                break
    # with the graph: a fixed point is confirmed (and differentiated) without a step, so one
    # box-DDP iteration is all a module problem needs; an LQR problem is solved exactly
    solution = final(u)
    if convex:
        converged = converged | (_change(solution.u.detach(), u) <= tol)
    else:  # the last iterate is a fixed point if box-DDP takes no step from it
        converged = (solution.info.iterations == 0) & solution.info.converged
    assert x is not None and cost is not None  # max_iter >= 1 (MPCOptions)
    keep = converged.view(B, 1, 1)
    residual = torch.where(converged, solution.info.residual, residual)
    info = SolverInfo(iterations, converged, residual, step_size)
    info.enforce(opts.on_unconverged)
    return Solution(
        torch.where(keep, solution.x, x),
        torch.where(keep, solution.u, u),
        torch.where(converged, solution.cost, cost),
        info,
    )
