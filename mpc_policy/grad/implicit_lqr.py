"""The implicit gradient of box LQR (sections 3 and 4.1 of the paper): the one VJP rule.

A known solution tau* = (x*, u*) of a box-LQR problem, with the factorization of its last
backward pass, is made differentiable with respect to x_init, C, c, F, f and the bounds by
one more LQR solve (eq. (9): c replaced by dL/dtau, f by 0, x_init by 0, the clamped
controls fixed at 0, the forward factorization reused) and eqs. (7)-(8); the multipliers of
the active bounds give the bounds' gradients. Both the LQR layer (``lqr_solve``) and the MPC
layer (``fixed_point``) attach their gradients here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mpc_policy.numerics.adjoint import costates_from_gradient
from mpc_policy.numerics.riccati import Gains
from mpc_policy.solve.backend import select

__all__ = ["implicit_lqr"]


class _ImplicitLQR(torch.autograd.Function):
    """Identity on a known LQR solution whose backward pass is eqs. (9) and (8).

    Inputs are time-major: x_init (B, n), C (T, B, d, d), c (T, B, d), F (T-1, B, n, d),
    f (T-1, B, n), u_lower / u_upper (T, B, m) or None, the solution x (T, B, n) and
    u (T, B, m), the ``Gains`` factorized at that solution (their free set marks the
    clamped controls) and the backend option. The backward depends only on the solution,
    the active set and the problem data, never on how the solution was found; it runs the
    torch kernels when a graph of it is asked for (double backward).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x_init: Tensor,
        C: Tensor,
        c: Tensor,
        F: Tensor,
        f: Tensor,
        u_lower: Tensor | None,
        u_upper: Tensor | None,
        x: Tensor,
        u: Tensor,
        gains: Gains,
        backend: str,
        data: tuple[Tensor, Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(C, c, F, x, u, u_lower, u_upper)
        ctx.gains = gains
        ctx.backend = backend
        ctx.data = data
        return x.clone(), u.clone()

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor, grad_u: Tensor) -> tuple[Tensor | None, ...]:
        C, c, F, x, u, u_lower, u_upper = ctx.saved_tensors
        gains: Gains = ctx.gains
        graph = torch.is_grad_enabled()  # a double backward differentiates this one
        kernels = select(ctx.backend, x.device, needs_graph=graph)
        if ctx.data is not None and not graph:
            C, c, F = ctx.data
        tau = torch.cat([x, u], dim=-1)
        grad_tau = torch.cat([grad_x, grad_u], dim=-1)
        # the MPC layer passes C and F as constants: its parameter gradient flows through
        # c and f, so the outer products of eq. (8) are formed only when asked for
        need = ctx.needs_input_grad
        grads = kernels.implicit_gradients(
            gains, C, c, F, tau, grad_tau, need[1], need[3], need[5] or need[6]
        )
        dx_init, dc, df = grads.dlam[0], grads.dtau, grads.dlam[1:]
        d_lower = d_upper = None
        if grads.residual_u is not None:
            # multipliers of the active bounds: the u-rows of the stationarity residual
            residual_u = grads.residual_u
            clamped = ~gains.free
            zero = torch.zeros_like(residual_u)
            share_lower = (clamped & (u <= u_lower)) if u_lower is not None else None
            share_upper = (clamped & (u >= u_upper)) if u_upper is not None else None
            if share_lower is not None and share_upper is not None:
                share_lower, share_upper = _pinned_shares(
                    share_lower, share_upper, clamped & (u_lower == u_upper), ctx, C, c, F, x, u
                )
            if share_lower is not None:
                d_lower = torch.where(share_lower > 0, residual_u * share_lower, zero)
            if share_upper is not None:
                d_upper = torch.where(share_upper > 0, residual_u * share_upper, zero)
        dC, dF = grads.dC, grads.dF
        return dx_init, dC, dc, dF, df, d_lower, d_upper, None, None, None, None, None


def _pinned_shares(
    at_lower: Tensor,
    at_upper: Tensor,
    pinned: Tensor,
    ctx: Any,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    x: Tensor,
    u: Tensor,
) -> tuple[Tensor, Tensor]:
    """The share (T, B, m) of each active bound's multiplier; 1 on an active bound.

    A control pinned by its bounds (u_lower == u_upper, ``pinned`` (T, B, m)) sits on both,
    and its multiplier belongs once to the pair: d u / d u_lower + d u / d u_upper = 1. It goes
    to the bound the cost pushes against (the sign of the forward problem's stationarity
    residual, the gradient of the Lagrangian without the bounds): a positive residual presses
    on the lower bound, and moving the lower bound down moves the control while moving the
    upper bound up does not, so these are the one-sided derivatives in the only direction each
    bound can move on its own. A residual of exactly zero (both one-sided derivatives zero)
    splits it in halves, the derivative of moving both together.
    """
    share_lower, share_upper = at_lower.to(u.dtype), at_upper.to(u.dtype)
    if not bool(pinned.any()):
        return share_lower, share_upper
    if ctx.data is not None and not torch.is_grad_enabled():
        C, c, F = ctx.data
    C, c, F = C.detach(), c.detach(), F.detach()
    tau = torch.cat([x, u], dim=-1).detach()
    n = x.shape[-1]
    gradient = (C @ tau.unsqueeze(-1)).squeeze(-1) + c
    push = gradient[..., n:].clone()
    if F.shape[0] > 0:
        lam = costates_from_gradient(gradient, F)  # eq. (7)
        push[:-1] += (F[..., n:].transpose(-1, -2) @ lam[1:].unsqueeze(-1)).squeeze(-1)
    half = torch.full_like(share_lower, 0.5)
    pinned_lower = torch.where(push > 0, 1.0, torch.where(push < 0, 0.0, half))
    share_lower = torch.where(pinned, pinned_lower, share_lower)
    share_upper = torch.where(pinned, 1.0 - pinned_lower, share_upper)
    return share_lower, share_upper


def implicit_lqr(
    x_init: Tensor,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    u_lower: Tensor | None,
    u_upper: Tensor | None,
    x: Tensor,
    u: Tensor,
    gains: Gains,
    backend: str = "auto",
    data: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Attach the implicit LQR gradient to a known solution (time-major, see _ImplicitLQR).

    Returns x (T, B, n) and u (T, B, m), equal to the given solution, differentiable with
    respect to x_init, C, c, F, f and the bounds; ``backend`` is the solver option and
    ``data`` optional detached, contiguous copies of (C, c, F) for the backward's numerics.
    """
    out: tuple[Tensor, Tensor] = _ImplicitLQR.apply(
        x_init, C, c, F, f, u_lower, u_upper, x, u, gains, backend, data
    )
    return out
