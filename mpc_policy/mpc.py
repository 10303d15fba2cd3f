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
- "unroll": autograd through every iteration (section 4.3's alternative), the local models
  differentiated along the iterates too, so that it tends to "exact" as they converge.

The user's modules are called through ``mpc_policy.problem.contract`` (dynamics on flattened rows,
every return checked), and an element that turns non-finite is reported, NaN, and left out of
every gradient (``mpc_policy.solve.health``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.constrained_mpc import constrained_forward
from mpc_policy.grad.attach import GradientProblem, attach, finish, rule_for
from mpc_policy.options import MPCOptions
from mpc_policy.problem.contract import (
    CheckedCost,
    CheckedDynamics,
    check_declared_sizes,
    determinism_hint,
)
from mpc_policy.problem.module_model import ModuleModel
from mpc_policy.problem.validation import (
    check_bounds,
    check_device,
    check_finite,
    check_tensor,
    check_untransformed,
    complete_bounds,
    expand_bound,
    scalar_bounds_valid,
)
from mpc_policy.solution import Solution, SolverInfo, Status
from mpc_policy.solve.backend import Kernels, select
from mpc_policy.solve.compiled_path import compiled_ddp
from mpc_policy.solve.ddp import DDPResult, box_ddp

__all__ = ["MPC"]


class MPC(nn.Module):
    """Differentiable box-constrained MPC solved by box-DDP.

    Args:
        n_state: state size n.
        n_ctrl: control size m.
        horizon: number of time steps T (states x_1..x_T, controls u_1..u_T).
        u_lower: control lower bound: a float, (m,), (B, m) or (B, T, m); None = unbounded.
        u_upper: control upper bound, same forms as ``u_lower``.
        constraints: optional module of inequality constraints beside the box,
            constraints(x (B, T, n), u (B, T, m)) -> g (B, T, p), feasible where g <= 0
            (``mpc_policy.problem.constraints``); solved by augmented-Lagrangian box-DDP and
            differentiated through the constrained KKT conditions (``grad_method="exact"``).
        **options: ``MPCOptions`` fields (``grad_method``, ``max_iter``, ``tol``, ...).

    Call it as ``mpc(x_init, cost, dynamics, u_init=None, multipliers=None)``:

        x_init: (B, n) initial states.
        cost: module, cost(x (B, T, n), u (B, T, m)) -> (B, T).
        dynamics: module, dynamics(x (N, n), u (N, m)) -> (N, n) on rows (the solver's
            time, candidate and batch dimensions flattened, batch index fastest).
        u_init: (B, T, m) warm start (zeros if None).
        multipliers: (B, T, p) warm start of the constraints' multipliers (zeros if None),
            e.g. ``solution.constraints.multipliers`` of the last solve.

    It returns a ``Solution`` (x (B, T, n), u (B, T, m), cost (B,), info, and with
    constraints their report) whose x, u and cost are differentiable with respect to
    x_init, the bounds and every parameter of the cost, the dynamics and the constraints.
    """

    def __init__(
        self,
        n_state: int,
        n_ctrl: int,
        horizon: int,
        u_lower: float | Tensor | None = None,
        u_upper: float | Tensor | None = None,
        constraints: nn.Module | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if constraints is not None and not callable(constraints):
            raise TypeError(
                "constraints: expected a module called as constraints(x, u) -> (B, T, p), "
                f"received {type(constraints).__name__}"
            )
        self.constraints = constraints
        for name, value in (("n_state", n_state), ("n_ctrl", n_ctrl), ("horizon", horizon)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        self.n_state, self.n_ctrl, self.horizon = n_state, n_ctrl, horizon
        self.u_lower, self.u_upper = u_lower, u_upper
        self.options = MPCOptions.from_kwargs(**options)

    def with_options(self, **options: Any) -> MPC:
        """A copy of this controller with some options changed."""
        other = MPC(
            self.n_state, self.n_ctrl, self.horizon, self.u_lower, self.u_upper, self.constraints
        )
        other.options = MPCOptions.from_kwargs(self.options, **options)
        return other

    def extra_repr(self) -> str:
        return f"n_state={self.n_state}, n_ctrl={self.n_ctrl}, horizon={self.horizon}"

    def expanded_bounds(self, B: int, like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The checked bounds as (B, T, m) tensors (both or neither) in ``like``'s dtype and
        device; bounds given as numbers are expanded once per batch size, dtype and device
        (read-only views: no layer writes into a bound)."""
        lower, upper = self.u_lower, self.u_upper
        numbers = scalar_bounds_valid(lower, upper)
        # made in inference mode they could not be saved for a backward outside it
        inference = torch.is_inference_mode_enabled()
        key = (lower, upper, B, self.horizon, self.n_ctrl, like.dtype, like.device, inference)
        cached = self.__dict__.get("_number_bounds")
        if numbers and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        T, m = self.horizon, self.n_ctrl
        lower_t = expand_bound("u_lower", lower, B, T, m, like)
        upper_t = expand_bound("u_upper", upper, B, T, m, like)
        if not numbers:
            check_bounds(lower_t, upper_t)  # tensors (or invalid numbers: the same message)
        lower_t, upper_t = complete_bounds(lower_t, upper_t)
        if numbers:
            self.__dict__["_number_bounds"] = (key, lower_t, upper_t)
        return lower_t, upper_t

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
        lower, upper = self.expanded_bounds(B, x_init)
        given = u_init is not None
        if u_init is None:
            u_init = torch.zeros(B, T, m, dtype=x_init.dtype, device=x_init.device)
        else:
            u_init = check_tensor("u_init", u_init)
            check_device("x_init", x_init, u_init=u_init)
            if tuple(u_init.shape) != (B, T, m):
                raise ValueError(
                    f"u_init: expected shape (B, T, m) = ({B}, {T}, {m}), "
                    f"received {tuple(u_init.shape)}"
                )
            u_init = u_init.to(x_init.dtype)
        check_finite(x_init=x_init, u_init=u_init if given else None)  # zeros are finite
        return x_init, lower, upper, u_init

    def forward(
        self,
        x_init: Tensor,
        cost: nn.Module,
        dynamics: nn.Module,
        u_init: Tensor | None = None,
        multipliers: Tensor | None = None,
    ) -> Solution:
        # a compile boundary: under torch.compile the solve runs eagerly (its data-dependent
        # loop and its implicit backward cannot be traced) and the model around it compiles;
        # outside it no wrapper is crossed (torch.compiler.disable's costs 8 us a call)
        if torch.compiler.is_compiling():
            return _eager_forward(self, x_init, cost, dynamics, u_init, multipliers)
        return self._forward(x_init, cost, dynamics, u_init, multipliers)

    def _forward(
        self,
        x_init: Tensor,
        cost: nn.Module,
        dynamics: nn.Module,
        u_init: Tensor | None,
        multipliers: Tensor | None,
    ) -> Solution:
        opts = self.options
        for name, module in (("cost", cost), ("dynamics", dynamics)):
            if not callable(module):
                raise TypeError(
                    f"{name}: expected a module called as {name}(x, u), "
                    f"received {type(module).__name__}"
                )
        check_declared_sizes(dynamics, self.n_state, self.n_ctrl)
        x_init, lower, upper, u_init = self._inputs(x_init, u_init)
        for name, module in (("dynamics", dynamics), ("cost", cost)):
            check_untransformed(f"{name} ({type(module).__name__})", module)
        if self.constraints is not None:
            check_untransformed(
                f"constraints ({type(self.constraints).__name__})", self.constraints
            )
        if self.constraints is not None:
            solution = constrained_forward(
                opts,
                (self.n_state, self.n_ctrl, self.horizon),
                self.constraints,
                x_init,
                lower,
                upper,
                u_init,
                cost,
                dynamics,
                multipliers,
            )
            solution.info.declined = "constraints beside the box (the augmented Lagrangian)"
            return solution
        if multipliers is not None:
            raise ValueError(
                "multipliers: a warm start of the constraints' multipliers needs "
                "MPC(constraints=...); this controller has none"
            )
        lower_t = None if lower is None else lower.transpose(0, 1)
        upper_t = None if upper is None else upper.transpose(0, 1)
        u0 = (u_init.detach() if u_init.requires_grad else u_init).transpose(0, 1)
        checked_cost = CheckedCost(cost)
        checked_dynamics = CheckedDynamics(dynamics, self.n_state, self.n_ctrl, x_init.shape[0])
        # the whole forward solve as one compiled call where the modules have compiled twins
        # (solve/compiled_path.py), else the box-DDP loop; the same gradient either way
        compiled = compiled_ddp(cost, dynamics, x_init, u0, lower_t, upper_t, opts)
        if isinstance(compiled, str):
            result, kernels = self._solve(
                checked_cost, checked_dynamics, x_init, u0, lower_t, upper_t
            )
            info = result.info if opts.grad_method == "unroll" else result.info.clone()
            info.declined = compiled
        elif not torch.is_grad_enabled():
            # no graph can be built (acting, evaluation): the kernel's trajectory and cost
            x, u, value = compiled.values()
            info = compiled.info
            self.enforce(info, checked_cost, checked_dynamics, x, u)
            return Solution(x, u, value, info)
        else:
            result, kernels = compiled.result(), compiled.kernels
            info = result.info
        self.enforce(info, checked_cost, checked_dynamics, result.x, result.u, time_major=True)
        problem = GradientProblem(
            checked_cost,
            checked_dynamics,
            x_init,
            u0,
            lower_t,
            upper_t,
            result,
            info.converged,
            opts,
            kernels,
        )
        x, u, rows = attach(
            rule_for(opts.grad_method, constrained=False), problem, info, (cost, dynamics, None)
        )
        x, u, value = finish(x, u, info, rows, cost, checked_cost, opts)
        return Solution(x, u, value, info)

    def enforce(
        self,
        info: SolverInfo,
        cost: CheckedCost,
        dynamics: CheckedDynamics,
        x: Tensor,
        u: Tensor,
        time_major: bool = False,
    ) -> None:
        """``on_unconverged`` applied to the report of the solution x, u ((B, T, ...), or
        (T, B, ...) when ``time_major``), with a hint where a module is not deterministic."""
        opts = self.options
        hint = ""
        if opts.on_unconverged != "ignore" and not info.all_converged:
            stopped = (info.codes == int(Status.MAX_ITER)) | (info.codes == int(Status.STALLED))
            if bool(stopped.any()):
                # a module that answers differently each call keeps the solve from a fixed
                # point
                if not time_major:
                    x, u = x.transpose(0, 1), u.transpose(0, 1)
                hint = determinism_hint(cost, dynamics, x, u)
        info.enforce(opts.on_unconverged, f"{cost.name}, {dynamics.name}", hint)

    def _solve(
        self,
        cost: CheckedCost,
        dynamics: CheckedDynamics,
        x_init: Tensor,
        u0: Tensor,
        lower_t: Tensor | None,
        upper_t: Tensor | None,
    ) -> tuple[DDPResult, Kernels]:
        """The box-DDP solve of x_init (B, n) from u0 (T, B, m) within the time-major bounds
        (T, B, m): with the graph of its iterations for ``grad_method="unroll"``, in
        inference mode otherwise (the solve needs no graph, and every op is cheaper; the
        model's local models switch it off where they differentiate)."""
        opts = self.options
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
            return result, kernels
        kernels = select(opts.backend, x_init.device)
        model = ModuleModel(cost, dynamics, opts, create_graph=False)
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
        return result, kernels


# MPC.forward under torch.compile: run eagerly, a graph break around the solve
_eager_forward = torch.compiler.disable(MPC._forward)
