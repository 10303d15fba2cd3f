"""mpc.pytorch 0.0.6's ``mpc.lqr_step``: one box-iLQR step on a given LQR model.

``LQRStep(n_state, n_ctrl, T, ..., current_x, current_u)(x_init, C, c, F, f)`` takes the
quadratic model (C, c) and affine model (F, f) of a problem around the nominal trajectory
(current_x [T, B, n], current_u [T, B, m]) and returns the next iterate of box-DDP:

    backward:  the box-LQR backward pass (``mpc_policy.local_model.feedback_gains``) on the
               model in the delta space, g_t = C_t tau_t + c_t, with du in [lower - u,
               upper - u] (and in [-delta_u, delta_u]);
    forward:   u = u_bar + alpha k + K (x - x_bar), clamped to the box (and to u_bar +-
               delta_u), rolled out through the TRUE dynamics, with alpha per element
               multiplied by linesearch_decay while the TRUE cost is above the nominal's.

With ``no_op_forward`` it returns the nominal itself. Either way the outputs are
differentiable with respect to x_init, C, c, F and f by the implicit LQR rule of the model
(``mpc_policy.lqr_solve``), which is exact where the nominal is the model's solution.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mpc_policy.compat import util
from mpc_policy.compat.problem import (
    control_bound,
    dynamics_step,
    dynamics_terms,
    quadratic_terms,
    zero_mask,
)
from mpc_policy.compat.terms import LinDx, QuadCost
from mpc_policy.local_model import feedback_gains
from mpc_policy.lqr import lqr_solve

__all__ = ["LQRStep", "LqrBackOut", "LqrForOut"]

LqrBackOut = namedtuple("LqrBackOut", "n_total_qp_iter")
LqrForOut = namedtuple("LqrForOut", "objs full_du_norm alpha_du_norm mean_alphas costs")


def _rollout(
    step: Callable[[Tensor, Tensor, int], Tensor],
    x_init: Tensor,
    nominal: tuple[Tensor, Tensor],
    K: Tensor,
    k: Tensor,
    box: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """x [T, B, n], u [T, B, m] of u_t = clamp(u_bar_t + k_t + K_t (x_t - x_bar_t), box_t)
    and x_{t+1} = step(x_t, u_t, t), from x_init [B, n] (K [T, B, m, n], k [T, B, m])."""
    (x_bar, u_bar), xs, us = nominal, [x_init], []
    for t in range(u_bar.shape[0]):
        u = u_bar[t] + k[t] + util.bmv(K[t], xs[t] - x_bar[t])
        us.append(u if box is None else torch.clamp(u, box[0][t], box[1][t]))
        if t + 1 < u_bar.shape[0]:
            xs.append(step(xs[t], us[t], t))
    return torch.stack(xs), torch.stack(us)


def _side(bound: float | Tensor | None, sign: float, u: Tensor, delta_u: float | None) -> Tensor:
    """(T, B, m) one side of the step's box: the bound (a float or (B, T, m)) tightened to
    u + sign * delta_u (sign -1 lower, +1 upper)."""
    edge = u + sign * (float("inf") if delta_u is None else delta_u)
    if bound is None:
        return edge
    if isinstance(bound, Tensor):
        limit = bound.detach().transpose(0, 1).to(u.dtype)
    else:
        limit = torch.full_like(u, float(bound))
    return torch.maximum(edge, limit) if sign < 0 else torch.minimum(edge, limit)


def LQRStep(
    n_state: int,
    n_ctrl: int,
    T: int,
    u_lower: float | Tensor | None = None,
    u_upper: float | Tensor | None = None,
    u_zero_I: Tensor | None = None,
    delta_u: float | None = None,
    linesearch_decay: float = 0.2,
    max_linesearch_iter: int = 10,
    true_cost: QuadCost | nn.Module | None = None,
    true_dynamics: LinDx | nn.Module | None = None,
    delta_space: bool = True,
    current_x: Tensor | None = None,
    current_u: Tensor | None = None,
    verbose: int = 0,
    back_eps: float = 1e-3,
    no_op_forward: bool = False,
) -> Callable[..., tuple[Tensor, ...]]:
    """One box-iLQR step (see the module docstring).

    Args:
        n_state, n_ctrl, T: n, m and the horizon.
        u_lower, u_upper: floats or [T, B, m] control bounds; None for unbounded.
        u_zero_I: [T, B, m] mask of controls fixed to 0.
        delta_u: trust region on the change of each control, or None.
        linesearch_decay, max_linesearch_iter: the line search on the true cost.
        true_cost: a ``QuadCost`` or a row-wise cost module (the line search's cost).
        true_dynamics: a ``LinDx`` or a row-wise dynamics module (the rollout's).
        delta_space: must be True (mpc.pytorch implements nothing else).
        current_x, current_u: [T, B, n] and [T, B, m], the nominal trajectory.
        verbose, back_eps: accepted for compatibility.
        no_op_forward: return the nominal (with the gradient of the model's solution).

    Returns:
        A function (x_init [B, n], C [T, B, d, d], c [T, B, d], F [T-1, B, n, d],
        f [T-1, B, n] or empty) -> (new_x [T, B, n], new_u [T, B, m], n_total_qp_iter [1]
        (the number of box QPs solved), costs [B], full_du_norm [B], mean_alphas []),
        or -> (current_x, current_u) with ``no_op_forward``.
    """
    if not delta_space:
        raise ValueError("delta_space: expected True (the only step mpc.pytorch implements)")
    if current_x is None or current_u is None:
        raise ValueError("current_x, current_u: expected the nominal trajectory, received None")
    if delta_u is not None and not float(delta_u) > 0:
        raise ValueError(f"delta_u: expected a positive float or None, received {delta_u!r}")
    x_bar, u_bar = current_x.detach(), current_u.detach()
    B, d = x_bar.shape[1], n_state + n_ctrl
    zero = zero_mask(u_zero_I, T, B, n_ctrl)
    lower = control_bound("u_lower", u_lower, zero, T, B, n_ctrl, x_bar)  # float/(B, T, m)
    upper = control_bound("u_upper", u_upper, zero, T, B, n_ctrl, x_bar)
    bounded = lower is not None or upper is not None or delta_u is not None
    box = (
        (_side(lower, -1.0, u_bar, delta_u), _side(upper, 1.0, u_bar, delta_u)) if bounded else None
    )

    def attach(
        x_init: Tensor, terms: tuple[Tensor, Tensor, Tensor, Tensor], x: Tensor, u: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x, u with the implicit gradient of the model's solution (when one is needed)."""
        if not torch.is_grad_enabled() or not any(z.requires_grad for z in (x_init, *terms)):
            return x, u
        C, c, F, f = terms
        solution = lqr_solve(x_init, C, c, F, f, lower, upper, on_unconverged="ignore")
        sx, su = solution.x.transpose(0, 1), solution.u.transpose(0, 1)
        return x + (sx - sx.detach()), u + (su - su.detach())

    def step(x_init: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor) -> tuple[Tensor, ...]:
        """The step on batch-first model terms (no graph)."""
        tau = torch.cat([x_bar, u_bar], dim=-1).transpose(0, 1)
        g = (C @ tau.unsqueeze(-1)).squeeze(-1) + c  # (B, T, d) the model's gradient
        du_lower, du_upper = (
            (None,) * 2 if box is None else ((b - u_bar).transpose(0, 1) for b in box)
        )
        K, k = (z.transpose(0, 1) for z in feedback_gains(C, g, F, du_lower, du_upper))
        dx = LinDx(F.transpose(0, 1), f.transpose(0, 1)) if true_dynamics is None else true_dynamics
        advance = dynamics_step(dx, T, B, n_state, d)
        objective = (
            QuadCost(C.transpose(0, 1), c.transpose(0, 1)) if true_cost is None else true_cost
        )
        old_cost = util.get_cost(T, u_bar, objective, x=x_bar)
        alphas = torch.ones(B, dtype=x_bar.dtype, device=x_bar.device)
        full_du_norm = None
        for _ in range(max_linesearch_iter):
            scaled = k * alphas.view(1, B, 1)
            new_x, new_u = _rollout(advance, x_init, (x_bar, u_bar), K, scaled, box)
            costs = util.get_cost(T, new_u, objective, x=new_x)
            if full_du_norm is None:
                full_du_norm = (new_u - u_bar).transpose(0, 1).reshape(B, -1).norm(dim=1)
            worse = costs > old_cost
            if not bool(worse.any()):
                break
            alphas = torch.where(worse, alphas * linesearch_decay, alphas)
        else:  # as in mpc.pytorch: the last decay of a still-worse element is undone
            alphas = torch.where(costs > old_cost, alphas / linesearch_decay, alphas)
        assert full_du_norm is not None
        return new_x, new_u, costs, full_du_norm, alphas.mean()

    def apply(
        x_init: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        terms = (
            *quadratic_terms(C, c, T, B, d),
            *dynamics_terms(F, f, T, B, n_state, d),
        )
        if no_op_forward:
            return attach(x_init, terms, x_bar, u_bar)
        with torch.no_grad():
            new_x, new_u, costs, full_du_norm, mean_alphas = step(
                x_init.detach(), *(z.detach() for z in terms)
            )
        new_x, new_u = attach(x_init, terms, new_x, new_u)
        qp_count = torch.tensor([float(T if box is not None else 0)])
        return new_x, new_u, qp_count, costs, full_du_norm, mean_alphas

    return apply
