"""Box-DDP (Tassa et al., 2014; the paper's Algorithm 2) with per-element line search.

Iterates, from a nominal trajectory tau_bar = (x_bar, u_bar):

    1. quadratize the cost and linearize the dynamics around tau_bar  (eqs. (12), (13));
    2. run the box-LQR backward recursion on that model              (``riccati``);
    3. roll the true dynamics out with u = u_bar + alpha k + K (x - x_bar), clamped to the
       box, for alpha = 1, decay, decay^2, ... until the true cost decreases;

until the full step (alpha = 1) changes no control by more than tol * (1 + max |u_bar|): a
fixed point of the convex approximation (eq. (11)). Every batch element takes its own
step size and stops on its own; a converged element's trajectory is frozen.

The problem is given as a ``Model``: an LQR problem and a nonlinear cost/dynamics pair are
both models, so the bounded LQR layer and the nonlinear MPC share this loop.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from mpc_policy.options import MPCOptions
from mpc_policy.riccati import Gains, backward_recursion
from mpc_policy.solution import SolverInfo

__all__ = ["DDPResult", "Model", "box_ddp", "rollout"]


class Model(Protocol):
    """A control problem seen by the solver, time-major: x (T, B, n), u (T, B, m)."""

    def total_cost(self, x: Tensor, u: Tensor) -> Tensor:
        """(B,) cost of whole trajectories."""
        ...

    def quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Cost Hessians (T, B, d, d) and gradients (T, B, d) at the trajectory."""
        ...

    def linearize(self, x: Tensor, u: Tensor) -> Tensor:
        """Dynamics Jacobians (T-1, B, n, d) at the trajectory."""
        ...

    def step(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Next state (B, n) from x (B, n) and u (B, m) at time index t."""
        ...


class DDPResult(NamedTuple):
    """Outcome of ``box_ddp``: the trajectory (time-major), its cost, the last gains."""

    x: Tensor
    u: Tensor
    cost: Tensor
    gains: Gains
    info: SolverInfo


def _clamp(u: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    if lower is not None and upper is not None:
        return torch.clamp(u, lower, upper)
    if lower is not None:
        u = torch.maximum(u, lower)
    if upper is not None:
        u = torch.minimum(u, upper)
    return u


def _rows(z: Tensor, rows: Tensor | None) -> Tensor:
    """The batch elements ``rows`` of a time-major z (T, B, ...); all of them if None."""
    return z if rows is None else z.index_select(1, rows)


def rollout(
    model: Model,
    x_init: Tensor,
    u: Tensor,
    x_bar: Tensor | None = None,
    gains: Gains | None = None,
    alpha: float = 1.0,
    lower: Tensor | None = None,
    upper: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Roll the model's dynamics out, optionally with the feedback of a DDP step.

    Args:
        model: the problem.
        x_init: (B, n) initial states.
        u: (T, B, m) nominal controls u_bar.
        x_bar: (T, B, n) nominal states (needed with ``gains``).
        gains: feedback K and step k; None rolls ``u`` out as it is.
        alpha: step size on k.
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.

    Returns:
        x: (T, B, n) and u: (T, B, m) of the new trajectory.
    """
    T = u.shape[0]
    feedback = gains is not None and x_bar is not None
    if feedback:
        assert gains is not None and x_bar is not None
        # u_bar + alpha k + K (x - x_bar): the open-loop part for all steps at once
        u_steps = (u + alpha * gains.k).unbind(0)
        K_steps, x_bar_steps = gains.K.unbind(0), x_bar.unbind(0)
    else:
        u_steps = u.unbind(0)
    lower_steps = (None,) * T if lower is None else lower.unbind(0)
    upper_steps = (None,) * T if upper is None else upper.unbind(0)
    xs, us = [], []
    x = x_init
    for t in range(T):
        u_t = u_steps[t]
        if feedback:
            dx = (x - x_bar_steps[t]).unsqueeze(-1)
            u_t = torch.baddbmm(u_t.unsqueeze(-1), K_steps[t], dx).squeeze(-1)
        u_t = _clamp(u_t, lower_steps[t], upper_steps[t])
        xs.append(x)
        us.append(u_t)
        if t < T - 1:
            x = model.step(x, u_t, t)
    return torch.stack(xs), torch.stack(us)


def box_ddp(
    model: Model,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    options: MPCOptions,
    warn_regularization: bool = True,
) -> DDPResult:
    """Solve a box-constrained control problem by box-DDP, each element on its own.

    Only the elements that moved since their last backward pass get a new one: a frozen
    element's gains would come out the same.

    Args:
        model: the problem (cost, dynamics and their local models).
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial nominal controls (projected onto the box).
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.
        options: solver options (iterations, tolerance, line search).
        warn_regularization: warn when a Q_uu block needs regularizing.

    Returns:
        The final trajectory, its cost, the gains of the last backward pass (at the final
        trajectory of every converged element) and the per-element report.
    """
    B = x_init.shape[0]
    device = x_init.device
    tol = options.tolerance(x_init.dtype)
    eps = torch.finfo(x_init.dtype).eps
    x_bar, u_bar = rollout(model, x_init, _clamp(u_init, lower, upper))
    cost_bar = model.total_cost(x_bar, u_bar)

    converged = torch.zeros(B, dtype=torch.bool, device=device)
    iterations = torch.zeros(B, dtype=torch.long, device=device)
    step_size = torch.zeros(B, dtype=x_init.dtype, device=device)
    residual = torch.full((B,), float("inf"), dtype=x_init.dtype, device=device)
    stalled = torch.zeros(B, dtype=torch.bool, device=device)
    gains: Gains | None = None
    for _ in range(options.max_iter + 1):
        C, g = model.quadratize(x_bar, u_bar)
        F = model.linearize(x_bar, u_bar)
        du_lower = None if lower is None else lower - u_bar
        du_upper = None if upper is None else upper - u_bar
        # converged and stalled elements are frozen: their last gains are still exact
        moved = ~(converged | stalled)
        rows = None if gains is None or bool(moved.all()) else torch.nonzero(moved).squeeze(-1)
        fresh = backward_recursion(
            _rows(C, rows),
            _rows(g, rows),
            _rows(F, rows),
            None if du_lower is None else _rows(du_lower, rows),
            None if du_upper is None else _rows(du_upper, rows),
            regularization=options.regularization,
            qp_max_iter=options.qp_max_iter,
            warn=warn_regularization,
        )
        if gains is None or rows is None:
            gains = fresh
        else:
            gains = Gains(*(old.index_copy(1, rows, new) for old, new in zip(gains, fresh)))
        x_full, u_full = rollout(model, x_init, u_bar, x_bar, gains, 1.0, lower, upper)
        scale = 1.0 + u_bar.detach().abs().amax(dim=(0, 2))
        residual = (u_full - u_bar).detach().abs().amax(dim=(0, 2)) / scale
        converged = converged | (residual <= tol)
        pending = ~converged & ~stalled & (iterations < options.max_iter)
        if not bool(pending.any()):
            break
        iterations = iterations + pending.long()

        accepted = torch.zeros(B, dtype=torch.bool, device=device)
        # a step whose cost change is below the rounding of the cost is not refused
        slack = 10.0 * eps * (1.0 + cost_bar.detach().abs())
        new_x, new_u, new_cost = x_bar, u_bar, cost_bar
        accepted_alpha = torch.zeros_like(step_size)
        for j in range(options.max_line_search):
            alpha = options.line_search_decay**j
            if j == 0:
                x_try, u_try = x_full, u_full
            else:
                x_try, u_try = rollout(model, x_init, u_bar, x_bar, gains, alpha, lower, upper)
            cost_try = model.total_cost(x_try, u_try)
            ok = pending & ~accepted & (cost_try.detach() <= cost_bar.detach() + slack)
            pick = ok.view(1, B, 1)
            new_x = torch.where(pick, x_try, new_x)
            new_u = torch.where(pick, u_try, new_u)
            new_cost = torch.where(ok, cost_try, new_cost)
            accepted_alpha = torch.where(ok, torch.full_like(step_size, alpha), accepted_alpha)
            accepted = accepted | ok
            if bool(accepted[pending].all()):
                break
        # no step size decreases the cost: this element is stuck where it is
        stalled = stalled | (pending & ~accepted)
        step_size = torch.where(pending, accepted_alpha, step_size)
        x_bar, u_bar, cost_bar = new_x, new_u, new_cost

    assert gains is not None
    info = SolverInfo(iterations, converged, residual, step_size)
    return DDPResult(x_bar, u_bar, cost_bar, gains, info)
