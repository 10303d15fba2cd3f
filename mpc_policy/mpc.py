"""Differentiable nonlinear MPC with box-bounded controls (the paper's Module 2).

Solves, for every batch element,

    min_{x, u}  sum_t C(x_t, u_t)   s.t.  x_1 = x_init,  x_{t+1} = f(x_t, u_t),
                                          u_lower <= u_t <= u_upper

by box-DDP to a fixed point of its convex approximation, then differentiates at that fixed
point with one LQR solve (no graph of the iterations is kept):

- "exact": implicit differentiation of the true first-order optimality conditions. The
  backward LQR uses the Hessian of the Lagrangian, H_t = d2 C_t + sum_i lambda_{t+1,i}
  d2 f_i, and the parameter part differentiates the optimality residual
  dC/dtau + F' lambda and the dynamics f with the graph kept (create_graph).
- "paper": the paper's rule (eq. (19)): differentiate the last convex approximation
  (cost Hessian only; a Gauss-Newton approximation for nonlinear dynamics).
- "unroll": autograd through every iteration (section 4.3's alternative).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.backend import Kernels, select
from mpc_policy.ilqr import box_ddp
from mpc_policy.linearize import cost_derivatives, dynamics_curvature, dynamics_jacobian
from mpc_policy.lqr import implicit_lqr
from mpc_policy.options import MPCOptions
from mpc_policy.solution import Solution
from mpc_policy.validation import (
    check_bounds,
    check_finite,
    check_tensor,
    complete_bounds,
    expand_bound,
)

__all__ = ["MPC"]


class ModuleModel:
    """A cost module and a dynamics module as a ``Model`` for box-DDP (time-major)."""

    def __init__(
        self, cost: nn.Module, dynamics: nn.Module, options: MPCOptions, create_graph: bool
    ) -> None:
        self.cost, self.dynamics = cost, dynamics
        self.options, self.create_graph = options, create_graph

    def total_cost(self, x: Tensor, u: Tensor) -> Tensor:
        return self.cost(x.transpose(0, 1), u.transpose(0, 1)).sum(-1)

    def quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        return cost_derivatives(self.cost, x, u, create_graph=self.create_graph)

    def linearize(self, x: Tensor, u: Tensor) -> Tensor:
        return dynamics_jacobian(
            self.dynamics,
            x[:-1],
            u[:-1],
            method=self.options.jacobian,
            eps=self.options.finite_diff_eps,
            create_graph=self.create_graph,
        )

    def step(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        return self.dynamics(x, u)


def _lqr_data_at(
    cost: nn.Module,
    dynamics: nn.Module,
    x: Tensor,
    u: Tensor,
    options: MPCOptions,
    kernels: Kernels,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The LQR problem whose solution is the fixed point and whose gradient is the MPC's.

    Args:
        x: (T, B, n), u: (T, B, m) the fixed point (constants).
        kernels: the backend of the costates.

    Returns:
        C (T, B, d, d) and F (T-1, B, n, d) without graph (they only shape the backward
        solve), c (T, B, d) and f (T-1, B, n) with the graph to the parameters, and the
        Hessian used for the factorization.
    """
    tau = torch.cat([x, u], dim=-1)
    H, g = cost_derivatives(cost, x, u, create_graph=True)
    F = dynamics_jacobian(
        dynamics,
        x[:-1],
        u[:-1],
        method=options.jacobian,
        eps=options.finite_diff_eps,
        create_graph=options.grad_method == "paper",
    )
    if options.grad_method == "paper":
        # differentiate the last convex approximation, eqs. (12), (13), (19)
        f_next = dynamics(x[:-1], u[:-1])
        c = g - (H @ tau.unsqueeze(-1)).squeeze(-1)
        f = f_next - (F @ tau[:-1].unsqueeze(-1)).squeeze(-1)
        return H, c, F, f, H.detach()
    # exact: the optimality conditions dC/dtau + F' lam_next - [lam; 0] = 0 and
    # f(tau) = x_next, differentiated at the solution with the Lagrangian's Hessian
    lam = kernels.costates_from_gradient(g.detach(), F)
    f_next, weighted, curvature = dynamics_curvature(
        dynamics, x[:-1], u[:-1], lam[1:], create_graph=True
    )
    H_lagrangian = H.detach().clone()
    H_lagrangian[:-1] += curvature
    c = g + torch.cat([weighted - weighted.detach(), torch.zeros_like(g[-1:])])
    c = c - (H_lagrangian @ tau.unsqueeze(-1)).squeeze(-1)
    f = f_next - (F @ tau[:-1].unsqueeze(-1)).squeeze(-1)
    return H_lagrangian, c, F, f, H_lagrangian


class MPC(nn.Module):
    """Differentiable box-constrained MPC solved by box-DDP.

    Args:
        n_state: state size n.
        n_ctrl: control size m.
        horizon: number of time steps T (states x_1..x_T, controls u_1..u_T).
        u_lower: control lower bound: a float, (m,), (B, m) or (B, T, m); None = unbounded.
        u_upper: control upper bound, same forms as ``u_lower``.
        **options: ``MPCOptions`` fields (``grad_method``, ``max_iter``, ``tol``, ...).

    Call it as ``mpc(x_init, cost, dynamics, u_init=None)``:

        x_init: (B, n) initial states.
        cost: module, cost(x (B, T, n), u (B, T, m)) -> (B, T).
        dynamics: module, dynamics(x (..., n), u (..., m)) -> (..., n).
        u_init: (B, T, m) warm start (zeros if None).

    It returns a ``Solution`` (x (B, T, n), u (B, T, m), cost (B,), info) whose x, u and
    cost are differentiable with respect to x_init, the bounds and every parameter of the
    cost and the dynamics.
    """

    def __init__(
        self,
        n_state: int,
        n_ctrl: int,
        horizon: int,
        u_lower: float | Tensor | None = None,
        u_upper: float | Tensor | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        for name, value in (("n_state", n_state), ("n_ctrl", n_ctrl), ("horizon", horizon)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        self.n_state, self.n_ctrl, self.horizon = n_state, n_ctrl, horizon
        self.u_lower, self.u_upper = u_lower, u_upper
        self.options = MPCOptions.from_kwargs(**options)

    def with_options(self, **options: Any) -> MPC:
        """A copy of this controller with some options changed."""
        other = MPC(self.n_state, self.n_ctrl, self.horizon, self.u_lower, self.u_upper)
        other.options = dataclasses.replace(self.options, **options)
        return other

    def extra_repr(self) -> str:
        return f"n_state={self.n_state}, n_ctrl={self.n_ctrl}, horizon={self.horizon}"

    def _inputs(
        self, x_init: Tensor, u_init: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        x_init = check_tensor("x_init", x_init)
        if x_init.dim() != 2 or x_init.shape[1] != self.n_state:
            raise ValueError(
                f"x_init: expected shape (B, n_state) = (B, {self.n_state}), "
                f"received {tuple(x_init.shape)}"
            )
        B, T, m = x_init.shape[0], self.horizon, self.n_ctrl
        lower = expand_bound("u_lower", self.u_lower, B, T, m, x_init)
        upper = expand_bound("u_upper", self.u_upper, B, T, m, x_init)
        check_bounds(lower, upper)
        lower, upper = complete_bounds(lower, upper)
        if u_init is None:
            u_init = torch.zeros(B, T, m, dtype=x_init.dtype, device=x_init.device)
        else:
            u_init = check_tensor("u_init", u_init)
            if tuple(u_init.shape) != (B, T, m):
                raise ValueError(
                    f"u_init: expected shape (B, T, m) = ({B}, {T}, {m}), "
                    f"received {tuple(u_init.shape)}"
                )
            u_init = u_init.to(x_init.dtype)
        check_finite(x_init=x_init, u_init=u_init)
        return x_init, lower, upper, u_init

    def forward(
        self,
        x_init: Tensor,
        cost: nn.Module,
        dynamics: nn.Module,
        u_init: Tensor | None = None,
    ) -> Solution:
        opts = self.options
        x_init, lower, upper, u_init = self._inputs(x_init, u_init)
        lower_t = None if lower is None else lower.transpose(0, 1)
        upper_t = None if upper is None else upper.transpose(0, 1)
        u0 = u_init.detach().transpose(0, 1)

        if opts.grad_method == "unroll":
            graph = torch.is_grad_enabled()
            kernels = select(opts.backend, x_init.device, needs_graph=graph)
            model = ModuleModel(cost, dynamics, opts, create_graph=graph)
            result = box_ddp(
                model,
                x_init,
                u0,
                lower_t,
                upper_t,
                opts,
                warn_regularization=False,
                kernels=kernels,
            )
            x, u, info = result.x, result.u, result.info
            info.enforce(opts.on_unconverged)
        else:
            kernels = select(opts.backend, x_init.device)
            model = ModuleModel(cost, dynamics, opts, create_graph=False)
            # inference mode: the solve needs no graph, and every op is cheaper (the model's
            # local models switch it off where they differentiate)
            with torch.inference_mode():
                lo = None if lower_t is None else lower_t.detach().contiguous()
                hi = None if upper_t is None else upper_t.detach().contiguous()
                result = box_ddp(
                    model,
                    x_init.detach(),
                    u0.contiguous(),
                    lo,
                    hi,
                    opts,
                    warn_regularization=False,
                    kernels=kernels,
                )
            info = result.info.clone()
            info.enforce(opts.on_unconverged)
            x, u = result.x.clone(), result.u.clone()
            if torch.is_grad_enabled():
                C, c, F, f, H = _lqr_data_at(cost, dynamics, x, u, opts, kernels)
                gains = kernels.factorize(
                    H.contiguous(),
                    F.detach().contiguous(),
                    result.gains.free.clone(),
                    regularization=opts.regularization,
                    warn=info.converged,
                )
                x, u = implicit_lqr(x_init, C, c, F, f, lower_t, upper_t, x, u, gains, opts.backend)
        if opts.on_unconverged == "zero_grad" and not info.all_converged:
            keep = info.converged.view(1, -1, 1)
            x = torch.where(keep, x, x.detach())
            u = torch.where(keep, u, u.detach())
        x, u = x.transpose(0, 1), u.transpose(0, 1)
        return Solution(x, u, cost(x, u).sum(-1), info)
