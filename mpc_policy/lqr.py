"""Differentiable box-constrained LQR (the paper's Module 1, with control bounds).

Solves, for every batch element,

    min_{x, u}  sum_{t=1}^{T}  1/2 tau_t' C_t tau_t + c_t' tau_t,   tau_t = [x_t; u_t]
    s.t.        x_1 = x_init,  x_{t+1} = F_t tau_t + f_t,  u_lower <= u_t <= u_upper

Without bounds one Riccati pass is exact (Algorithm 1). With bounds the backward recursion
solves a box QP per step and box-DDP iterates on the (exact) quadratic model until the
active set settles; every element converges on its own.

Gradients come from the implicit rule of section 3: the backward pass is ONE more LQR
solve, with c replaced by dL/dtau, f by 0 and the clamped controls fixed to 0, reusing the
forward pass's factorization (eq. (9)), then eq. (8). Gradients with respect to the bounds
are the multipliers of the active bound constraints in that same solve.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mpc_policy._warnings import warn_regularized
from mpc_policy.grad.implicit_lqr import implicit_lqr
from mpc_policy.numerics.condensed import solve_condensed
from mpc_policy.numerics.riccati import Gains
from mpc_policy.options import MPCOptions
from mpc_policy.problem.validation import (
    check_bounds,
    check_finite,
    check_same_kind,
    check_tensor,
    complete_bounds,
    expand_batched,
    expand_bound,
)
from mpc_policy.solution import Solution, SolverInfo, Status
from mpc_policy.solve.backend import Kernels, select
from mpc_policy.solve.ddp import DDPResult, box_ddp
from mpc_policy.solve.health import ddp_info, indefinite_rows, nonfinite_source
from mpc_policy.solve.rollout import rollout

__all__ = ["lqr_solve"]


class QuadraticModel:
    """An LQR problem as a ``Model`` for box-DDP; time-major data.

    Args:
        C: (T, B, d, d) symmetric quadratic terms.
        c: (T, B, d) linear terms.
        F: (T-1, B, n, d) dynamics matrices.
        f: (T-1, B, n) dynamics offsets.
    """

    def __init__(self, C: Tensor, c: Tensor, F: Tensor, f: Tensor) -> None:
        self.C, self.c, self.F, self.f = C, c, F, f
        self.affine = (F, f)

    def total_cost(self, x: Tensor, u: Tensor) -> Tensor:
        tau = torch.cat([x, u], dim=-1)
        Ctau = (self.C @ tau.unsqueeze(-1)).squeeze(-1)
        return (tau * (0.5 * Ctau + self.c)).sum(dim=(0, 2))

    def quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        tau = torch.cat([x, u], dim=-1)
        return self.C, (self.C @ tau.unsqueeze(-1)).squeeze(-1) + self.c

    def linearize(self, x: Tensor, u: Tensor) -> Tensor:
        return self.F

    def step(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        # rows of L candidates (L B, n): row r is element r mod B
        B, n = self.f.shape[1:]
        tau = torch.cat([x, u], dim=-1).view(-1, B, x.shape[-1] + u.shape[-1])
        return ((self.F[t] @ tau.unsqueeze(-1)).squeeze(-1) + self.f[t]).view(x.shape[0], n)

    def restrict(self, rows: Tensor, batch: int) -> QuadraticModel:
        """The problems of the batch elements ``rows`` (k,)."""
        return QuadraticModel(*(z.index_select(1, rows) for z in (self.C, self.c, self.F, self.f)))


def _finish_stalled(
    model: QuadraticModel,
    x_init: Tensor,
    lower: Tensor,
    upper: Tensor,
    x: Tensor,
    u: Tensor,
    gains: Gains,
    info: SolverInfo,
    options: MPCOptions,
    kernels: Kernels,
) -> tuple[Tensor, Tensor, Gains, SolverInfo]:
    """Solve the elements box-DDP left unconverged as condensed QPs (each on its own).

    Shapes are time-major as in ``QuadraticModel``; only the unconverged elements change.
    """
    index = torch.nonzero(~info.converged & (info.codes <= int(Status.STALLED))).flatten()
    sub = QuadraticModel(*(z[:, index] for z in (model.C, model.c, model.F, model.f)))
    qp = solve_condensed(
        x_init[index], sub.C, sub.c, sub.F, sub.f, lower[:, index], upper[:, index], u[:, index]
    )
    T, m = u.shape[0], u.shape[-1]
    u_sub = qp.x.view(-1, T, m).transpose(0, 1)
    x_sub, u_sub = rollout(sub, x_init[index], u_sub, kernels=kernels)
    free_sub = qp.free.view(-1, T, m).transpose(0, 1).contiguous()
    factors = kernels.factorize(sub.C, sub.F, free_sub, regularization=options.regularization)
    warn_regularized(factors.shift, None)
    x, u = x.clone(), u.clone()
    x[:, index], u[:, index] = x_sub, u_sub
    merged = []
    for whole, part in zip(gains, factors):
        whole = whole.clone()
        whole[:, index] = part
        merged.append(whole)
    converged = info.converged.clone()
    converged[index] = qp.converged
    residual = torch.where(converged, torch.zeros_like(info.residual), info.residual)
    step = info.step_size.clone()
    step[index] = 1.0
    status = info.codes.clone()
    status[index] = torch.where(qp.converged, int(Status.CONVERGED), status[index]).to(status.dtype)
    return (
        x,
        u,
        Gains(*merged),
        SolverInfo(info.iterations, converged, residual, step, backend=info.backend, status=status),
    )


def _bounded_solve(
    model: QuadraticModel,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor,
    upper: Tensor,
    options: MPCOptions,
    kernels: Kernels,
) -> DDPResult:
    """Box-DDP on bounded LQR problems: the whole loop compiled where the backend has it
    (the same decisions as ``box_ddp``), else ``box_ddp``; shapes as in ``box_ddp``."""
    if kernels.box_lqr is None:
        return box_ddp(model, x_init, u_init, lower, upper, options, kernels=kernels)
    alphas = options.line_search_decay ** torch.arange(options.max_line_search, dtype=x_init.dtype)
    u_start = torch.clamp(u_init, lower, upper)
    solved = kernels.box_lqr(
        model.C, model.c, model.F, model.f, x_init, u_start, lower, upper, alphas, options
    )
    if not bool(solved.finite.all()):
        # box_ddp owns the report of elements that turn non-finite
        return box_ddp(model, x_init, u_init, lower, upper, options, kernels=kernels)
    warn_regularized(solved.shift, None)
    info = ddp_info(
        solved.iterations,
        solved.converged,
        solved.stalled,
        torch.zeros(solved.cost.shape, dtype=torch.int8),
        # curvature is checked where box_ddp checks it: on the elements that did not stall
        indefinite_rows(model.C, model.F, solved.gains, ~solved.stalled, options.regularization),
        solved.residual,
        solved.step_size,
        kernels.name,
    )
    return DDPResult(solved.x, solved.u, solved.cost, solved.gains, info)


def _validate(
    x_init: Tensor, C: Tensor, c: Tensor, F: Tensor, f: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    x_init = check_tensor("x_init", x_init)
    C, c, F, f = (check_tensor(k, v) for k, v in (("C", C), ("c", c), ("F", F), ("f", f)))
    check_same_kind("x_init", x_init, C=C, c=c, F=F, f=f)
    if x_init.dim() != 2:
        raise ValueError(f"x_init: expected shape (B, n), received {tuple(x_init.shape)}")
    B, n = x_init.shape
    d = C.shape[-1] if C.dim() >= 1 else 0
    if F.dim() >= 2 and F.shape[-1] == d and F.shape[-2] < d and F.shape[-2] != n:
        # F and C agree on n + m: the initial state is the odd one out
        raise ValueError(
            f"x_init: expected shape (B, n) with n = {F.shape[-2]} (the state size of F, of "
            f"shape {tuple(F.shape)}), received {tuple(x_init.shape)}"
        )
    if C.dim() < 3 or C.shape[-1] != C.shape[-2] or C.shape[-1] <= n:
        raise ValueError(
            f"C: expected shape (B, T, n+m, n+m) or (T, n+m, n+m) with n = {n} and m >= 1, "
            f"received {tuple(C.shape)}"
        )
    d = C.shape[-1]
    T = C.shape[-3]
    C = expand_batched("C", C, B, (T, d, d))
    c = expand_batched("c", c, B, (T, d))
    F = expand_batched("F", F, B, (T - 1, n, d))
    f = expand_batched("f", f, B, (T - 1, n))
    check_finite(x_init=x_init, C=C, c=c, F=F, f=f)
    return x_init, C, c, F, f


def lqr_solve(
    x_init: Tensor,
    C: Tensor,
    c: Tensor,
    F: Tensor,
    f: Tensor,
    u_lower: float | Tensor | None = None,
    u_upper: float | Tensor | None = None,
    **options: Any,
) -> Solution:
    """Solve a batch of box-constrained LQR problems, differentiably.

    Args:
        x_init: (B, n) initial states.
        C: (B, T, n+m, n+m) or (T, n+m, n+m) quadratic cost terms (symmetrized).
        c: (B, T, n+m) or (T, n+m) linear cost terms.
        F: (B, T-1, n, n+m) or (T-1, n, n+m) dynamics x_{t+1} = F_t tau_t + f_t.
        f: (B, T-1, n) or (T-1, n) dynamics offsets.
        u_lower: control lower bound: a float, (m,), (B, m) or (B, T, m); None = unbounded.
        u_upper: control upper bound, same forms as ``u_lower``.
        **options: ``MPCOptions`` fields (max_iter, tol, qp_max_iter, line search,
            on_unconverged, regularization).

    Returns:
        ``Solution`` with x (B, T, n), u (B, T, m), cost (B,) and the per-element ``info``;
        x, u and cost are differentiable with respect to x_init, C, c, F, f and the bounds.
    """
    opts = MPCOptions.from_kwargs(**options)
    x_init, C, c, F, f = _validate(x_init, C, c, F, f)
    B, n = x_init.shape
    T, d = C.shape[1], C.shape[-1]
    m = d - n
    lower = expand_bound("u_lower", u_lower, B, T, m, x_init)
    upper = expand_bound("u_upper", u_upper, B, T, m, x_init)
    check_bounds(lower, upper)
    lower, upper = complete_bounds(lower, upper)

    # symmetrized values, identity gradient: every gradient with respect to C here (eq. (8),
    # the cost) is symmetric, so it equals the gradient through the symmetrization
    C = C + (0.5 * (C + C.transpose(-1, -2)) - C).detach()
    Ct, ct, Ft, ft = (z.transpose(0, 1) for z in (C, c, F, f))
    lower_t = None if lower is None else lower.transpose(0, 1)
    upper_t = None if upper is None else upper.transpose(0, 1)

    kernels = select(opts.backend, x_init.device)
    # inference mode: the solve needs no graph, and every op is cheaper
    with torch.inference_mode():
        model = QuadraticModel(*(z.detach().contiguous() for z in (Ct, ct, Ft, ft)))
        x0 = x_init.detach()
        if lower is None and upper is None:
            # one Riccati pass is exact without bounds (Algorithm 1)
            zeros = torch.zeros(T, B, m, dtype=x0.dtype, device=x0.device)
            x_bar, _ = rollout(model, x0, zeros, kernels=kernels)
            _, g = model.quadratize(x_bar, zeros)
            gains = kernels.backward_recursion(
                model.C, g, model.F, None, None, regularization=opts.regularization
            )
            warn_regularized(gains.shift, None)
            x_sol, u_sol = rollout(model, x0, zeros, x_bar, gains, kernels=kernels)
            done = torch.ones(B, dtype=torch.bool, device=x0.device)
            info = ddp_info(
                torch.ones(B, dtype=torch.long, device=x0.device),
                done,
                ~done,
                nonfinite_source((x_sol, u_sol), ())[0],
                indefinite_rows(model.C, model.F, gains, done, opts.regularization),
                torch.zeros(B, dtype=x0.dtype, device=x0.device),
                torch.ones(B, dtype=x0.dtype, device=x0.device),
                kernels.name,
            )
        else:
            # complete_bounds: a bounded problem has both sides (infinite where one-sided)
            assert lower_t is not None and upper_t is not None
            lo, hi = lower_t.detach().contiguous(), upper_t.detach().contiguous()
            zeros = torch.zeros(T, B, m, dtype=x0.dtype, device=x0.device)
            result = _bounded_solve(model, x0, zeros, lo, hi, opts, kernels)
            x_sol, u_sol, gains, info = result.x, result.u, result.gains, result.info
            retry = info.codes <= int(Status.STALLED)  # not a non-finite or indefinite one
            if not bool(info.converged[retry].all()):
                x_sol, u_sol, gains, info = _finish_stalled(
                    model, x0, lo, hi, x_sol, u_sol, gains, info, opts, kernels
                )
    # ordinary tensors from here on (the backward saves x and u)
    x_sol, u_sol, info = x_sol.clone(), u_sol.clone(), info.clone()
    gains = Gains(*(z.clone() for z in gains))
    info.enforce(opts.on_unconverged)

    data = (model.C, model.c, model.F)
    x_out, u_out = implicit_lqr(
        x_init, Ct, ct, Ft, ft, lower_t, upper_t, x_sol, u_sol, gains, opts.backend, data
    )
    if opts.on_unconverged == "zero_grad" and not info.all_converged:
        keep = info.converged.view(1, B, 1)
        x_out = torch.where(keep, x_out, x_out.detach())
        u_out = torch.where(keep, u_out, u_out.detach())
    x_out, u_out = x_out.transpose(0, 1), u_out.transpose(0, 1)
    tau = torch.cat([x_out, u_out], dim=-1)
    cost = (tau * (0.5 * (C @ tau.unsqueeze(-1)).squeeze(-1) + c)).sum(dim=(1, 2))
    return Solution(x_out, u_out, cost, info)
