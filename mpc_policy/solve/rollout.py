"""Trajectories of a control problem: its model, and rollouts with or without feedback.

``rollout`` rolls the model's dynamics out from x_init, with the feedback law of a DDP step

    u_t = clamp(u_bar_t + alpha k_t + K_t (x_t - x_bar_t), u_lower_t, u_upper_t)

for one step size alpha or L of them at once (line-search candidates, rolled out as the rows
l B + b of one batch, so that a step costs the tensor operations of one trajectory);
``linear_step`` rolls the full step out on the linearized dynamics, which decides the
fixed-point test without calling the model. Time-major: x (T, B, n), u (T, B, m).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from mpc_policy.numerics.riccati import Gains
from mpc_policy.solve.backend import TORCH, Kernels

__all__ = ["Model", "clamp", "linear_step", "rollout"]


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
        """Next states (R, n) from x (R, n) and u (R, m) at time index t: R = B, or R = L B
        for L line-search candidates (row r is element r mod B)."""
        ...


# A model may also have ``affine``: the pair F (T-1, B, n, d), f (T-1, B, n) of affine
# dynamics, which the compiled backend rolls out without calling ``step``.


def clamp(u: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    """u clamped to the bounds (either may be None), of shapes broadcasting with u."""
    if lower is not None and upper is not None:
        return torch.clamp(u, lower, upper)
    if lower is not None:
        u = torch.maximum(u, lower)
    if upper is not None:
        u = torch.minimum(u, upper)
    return u


def rollout(
    model: Model,
    x_init: Tensor,
    u: Tensor,
    x_bar: Tensor | None = None,
    gains: Gains | None = None,
    alpha: float | Tensor = 1.0,
    lower: Tensor | None = None,
    upper: Tensor | None = None,
    kernels: Kernels = TORCH,
) -> tuple[Tensor, Tensor]:
    """Roll the model's dynamics out, optionally with the feedback of a DDP step.

    Args:
        model: the problem.
        x_init: (B, n) initial states.
        u: (T, B, m) nominal controls u_bar.
        x_bar: (T, B, n) nominal states (needed with ``gains``).
        gains: feedback K and step k; None rolls ``u`` out as it is.
        alpha: step size on k, or (L,) step sizes rolled out together (line-search
            candidates; the results then have a leading dimension L).
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.
        kernels: the backend; its compiled affine rollout serves models with ``affine``.

    Returns:
        x: ([L,] T, B, n) and u: ([L,] T, B, m) of the new trajectory.
    """
    T = u.shape[0]
    feedback = gains is not None and x_bar is not None
    candidates = isinstance(alpha, Tensor)
    affine = getattr(model, "affine", None)
    if kernels.affine_rollout is not None and affine is not None:
        alphas = alpha if isinstance(alpha, Tensor) else torch.tensor([alpha], dtype=u.dtype)
        x, u_out = kernels.affine_rollout(
            *affine,
            x_init,
            u,
            x_bar if feedback else None,
            gains.K if feedback and gains is not None else None,
            gains.k if feedback and gains is not None else None,
            alphas,
            lower,
            upper,
        )
        return (x, u_out) if candidates else (x[0], u_out[0])
    L = alpha.shape[0] if isinstance(alpha, Tensor) else 1
    B = x_init.shape[0]
    if feedback:
        assert gains is not None and x_bar is not None
        # u_bar + alpha k + K (x - x_bar): the open-loop part for all steps at once; L
        # candidates are the rows l B + b of one batch (row r is element r mod B), so that a
        # step costs the tensor operations of one trajectory
        if isinstance(alpha, Tensor):
            u_open = u.unsqueeze(0) + alpha.view(-1, 1, 1, 1) * gains.k.unsqueeze(0)
            u_open = u_open.transpose(0, 1).reshape(T, L * B, -1)
        else:
            u_open = u + alpha * gains.k
        # the feedback law on (R, m, 1) columns: the unsqueezes made once for all steps
        u_steps = u_open.unsqueeze(-1).unbind(0)
        K_steps = _tile(gains.K, L).unbind(0)
        x_bar_steps = _tile(x_bar, L).unbind(0)
    else:
        u_steps = _tile(u, L).unsqueeze(-1).unbind(0)
    lower_steps = (None,) * T if lower is None else _tile(lower, L).unsqueeze(-1).unbind(0)
    upper_steps = (None,) * T if upper is None else _tile(upper, L).unsqueeze(-1).unbind(0)
    xs, us = [], []
    x = x_init.repeat(L, 1) if candidates else x_init
    for t in range(T):
        u_t = u_steps[t]
        if feedback:
            u_t = torch.baddbmm(u_t, K_steps[t], (x - x_bar_steps[t]).unsqueeze(-1))
        u_t = clamp(u_t, lower_steps[t], upper_steps[t]).squeeze(-1)
        xs.append(x)
        us.append(u_t)
        if t < T - 1:
            x = model.step(x, u_t, t)
    x_out, u_out = torch.stack(xs), torch.stack(us)
    if not candidates:
        return x_out, u_out
    return _untile(x_out, L), _untile(u_out, L)


def _tile(z: Tensor, L: int) -> Tensor:
    """(T, L B, ...) rows l B + b = z[:, b] of a time-major z (T, B, ...); z itself if L = 1."""
    if L == 1:
        return z
    T, B = z.shape[:2]
    return z.unsqueeze(1).expand(T, L, *z.shape[1:]).reshape(T, L * B, *z.shape[2:])


def _untile(z: Tensor, L: int) -> Tensor:
    """(L, T, B, ...) candidates of a time-major batch of rows z (T, L B, ...)."""
    T, rows = z.shape[:2]
    return z.view(T, L, rows // L, *z.shape[2:]).transpose(0, 1)


def linear_step(
    kernels: Kernels,
    F: Tensor,
    u_bar: Tensor,
    gains: Gains,
    lower: Tensor | None,
    upper: Tensor | None,
) -> Tensor:
    """Controls (T, B, m) of the full DDP step rolled out on the linearized dynamics.

    dx_1 = 0, u_t = clamp(u_bar_t + k_t + K_t dx_t), dx_{t+1} = F_t [dx_t; u_t - u_bar_t]:
    the minimizer of the convex approximation, whose distance to u_bar is the fixed-point
    residual, computed without calling the model.

    Args:
        kernels: the backend (the compiled one rolls the affine model out in one call).
        F: (T-1, B, n, d) dynamics Jacobians at the nominal trajectory.
        u_bar: (T, B, m) nominal controls.
        gains: the step's feedback K (T, B, m, n) and feedforward k (T, B, m).
        lower: (T, B, m) control lower bounds or None.
        upper: (T, B, m) control upper bounds or None.
    """
    T, B, _ = u_bar.shape
    n = F.shape[-2]
    with torch.no_grad():
        F, u_bar = F.detach(), u_bar.detach()
        K, k = gains.K.detach(), gains.k.detach()
        if kernels.affine_rollout is not None:
            # dx_{t+1} = F_t [dx_t; u_t] + f_t with f_t = -F_u,t u_bar_t
            f = -(F[..., n:] @ u_bar[:-1].unsqueeze(-1)).squeeze(-1)
            zeros = torch.zeros(B, n, dtype=u_bar.dtype, device=u_bar.device)
            x_bar = torch.zeros(T, B, n, dtype=u_bar.dtype, device=u_bar.device)
            alpha = torch.ones(1, dtype=u_bar.dtype)
            _, u = kernels.affine_rollout(F, f, zeros, u_bar, x_bar, K, k, alpha, lower, upper)
            return u[0]
        lower_steps = (None,) * T if lower is None else lower.unbind(0)
        upper_steps = (None,) * T if upper is None else upper.unbind(0)
        u_open = (u_bar + k).unbind(0)
        u_bar_steps, K_steps = u_bar.unbind(0), K.unbind(0)
        F_x, F_u = F[..., :n].unbind(0), F[..., n:].unbind(0)
        dx = torch.zeros(B, n, 1, dtype=u_bar.dtype, device=u_bar.device)
        us = []
        for t in range(T):
            u_t = torch.baddbmm(u_open[t].unsqueeze(-1), K_steps[t], dx).squeeze(-1)
            u_t = clamp(u_t, lower_steps[t], upper_steps[t])
            us.append(u_t)
            if t < T - 1:
                du = (u_t - u_bar_steps[t]).unsqueeze(-1)
                dx = torch.baddbmm(torch.bmm(F_u[t], du), F_x[t], dx)
        return torch.stack(us)
