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
            if u_lower is not None:
                at_lower = clamped & (u <= u_lower)
                d_lower = torch.where(at_lower, residual_u, torch.zeros_like(residual_u))
            if u_upper is not None:
                at_upper = clamped & (u >= u_upper)
                d_upper = torch.where(at_upper, residual_u, torch.zeros_like(residual_u))
        dC, dF = grads.dC, grads.dF
        return dx_init, dC, dc, dF, df, d_lower, d_upper, None, None, None, None, None


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
