"""The public surface of mpc.pytorch 0.0.6's ``mpc.mpc``, solved by ``mpc_policy``.

Switch with one line: ``from mpc_policy.compat import mpc`` instead of ``from mpc import mpc``.
``mpc.MPC(n_state, n_ctrl, T, ...)(x_init, cost, dx)`` solves, for every batch element,

    min_{x, u}  sum_t C_t(x_t, u_t)   s.t.  x_1 = x_init,  x_{t+1} = f(x_t, u_t),
                                          u_lower <= u_t <= u_upper

with mpc.pytorch's time-major shapes, x_init [B, n], returning ``(x [T, B, n], u [T, B, m],
costs [B])``. A ``QuadCost`` with ``LinDx`` dynamics is one box-LQR problem
(``mpc_policy.lqr_solve``); any other pair is solved by box-DDP (``mpc_policy.MPC``). Every
batch element converges on its own and is differentiated exactly at its fixed point; where
this differs from mpc.pytorch is in docs/coming-from-mpc-pytorch.md.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn

from mpc_policy.compat import problem
from mpc_policy.compat.lqr_step import LQRStep
from mpc_policy.compat.problem import received
from mpc_policy.compat.terms import GradMethods, LinDx, QuadCost
from mpc_policy.local_model import linearize, quadratize
from mpc_policy.options import GradMethod
from mpc_policy.solution import SolverInfo

__all__ = ["MPC", "GradMethods", "LinDx", "QuadCost", "SlewRateCost"]

logger = logging.getLogger(__name__)

# backprop=False warns once per process (mpc.pytorch never read it; neither does this layer)
_BACKPROP_WARNED = False


def _warn_backprop() -> None:
    """The one warning of a process about ``backprop=False``."""
    global _BACKPROP_WARNED
    if _BACKPROP_WARNED:
        return
    _BACKPROP_WARNED = True
    warnings.warn(
        "backprop=False: mpc.pytorch never read it (its solves always keep the gradient), so "
        "mpc_policy.compat ignores it too and learning through the layer continues; to solve "
        "without a graph, call the layer under torch.no_grad() (docs/coming-from-mpc-pytorch.md)",
        UserWarning,
        stacklevel=3,
    )


class MPC(nn.Module):
    """mpc.pytorch's differentiable box-constrained MPC, solved by ``mpc_policy``.

    Args:
        n_state, n_ctrl, T: state size n, control size m, horizon T.
        u_lower, u_upper: control bounds: floats or [T, B, m] (also [T, m] or [m]); None on
            one side leaves it unbounded. Gradients reach tensor bounds.
        u_zero_I: [T, B, m] mask of controls fixed to 0.
        u_init: [T, B, m] or [T, m] warm start (nonlinear problems; a ``LinDx`` problem is
            convex and starts from zero).
        lqr_iter: maximum box-DDP iterations (``max_iter``).
        grad_method: ``GradMethods`` member: how dynamics modules are linearized
            (``jacobian`` "autograd", "finite_diff" or "analytic" from ``dx.grad_input``).
        delta_u: trust region: no control changes by more than this in one iteration
            (``mpc_policy.trust_region``); None (default) for none.
        verbose: -1 no warnings, 0 warnings, 1+ a summary of each solve logged at INFO on
            the ``mpc_policy.compat.mpc`` logger.
        eps: convergence tolerance on the full control step (``tol``, relative to
            1 + max |u|, per element); None (default) is 1e-7 in float64, 1e-4 in float32.
        back_eps: accepted for compatibility; the backward pass is one exact LQR solve.
        n_batch: batch size; optional (taken from x_init), checked when given.
        linesearch_decay, max_linesearch_iter: the line search (``line_search_decay``,
            ``max_line_search``).
        exit_unconverged: with ``detach_unconverged``, raise ``ConvergenceError`` when an
            element does not converge (mpc.pytorch: ``assert False``).
        detach_unconverged: unconverged elements get no gradient (with a warning).
        backprop: accepted and, as in mpc.pytorch (which never read it), without effect:
            gradients flow either way; False warns once per process. Solve without a graph
            by calling the layer under ``torch.no_grad()``.
        slew_rate_penalty: gamma of gamma/2 ||u_t - u_{t-1}||^2 (u_0 = prev_ctrl or 0).
        prev_ctrl: [m], [B, m] or [1, B, m] control before u_1, for the slew-rate penalty.
        not_improved_lim, best_cost_eps: accepted for compatibility; the line search only
            accepts steps that lower the cost, so the last iterate is the best one.
        diff_rule: how the solution is differentiated (``mpc_policy``'s ``grad_method``):
            "exact" (default), "paper" (the paper's rule) or "unroll".

    After a call, ``last_info`` holds the per-element ``SolverInfo`` of that solve.
    """

    def __init__(
        self,
        n_state: int,
        n_ctrl: int,
        T: int,
        u_lower: float | Tensor | None = None,
        u_upper: float | Tensor | None = None,
        u_zero_I: Tensor | None = None,
        u_init: Tensor | None = None,
        lqr_iter: int = 10,
        grad_method: GradMethods = GradMethods.ANALYTIC,
        delta_u: float | None = None,
        verbose: int = 0,
        eps: float | None = None,
        back_eps: float = 1e-7,
        n_batch: int | None = None,
        linesearch_decay: float = 0.2,
        max_linesearch_iter: int = 10,
        exit_unconverged: bool = True,
        detach_unconverged: bool = True,
        backprop: bool = True,
        slew_rate_penalty: float | None = None,
        prev_ctrl: Tensor | None = None,
        not_improved_lim: int = 5,
        best_cost_eps: float = 1e-4,
        *,
        diff_rule: GradMethod = "exact",
    ) -> None:
        super().__init__()
        for name, value in (("n_state", n_state), ("n_ctrl", n_ctrl), ("T", T)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        self.n_state, self.n_ctrl, self.T = n_state, n_ctrl, T
        self.u_lower, self.u_upper, self.u_zero_I = u_lower, u_upper, u_zero_I
        self.u_init, self.lqr_iter, self.grad_method = u_init, lqr_iter, grad_method
        self.delta_u, self.verbose, self.eps, self.back_eps = delta_u, verbose, eps, back_eps
        self.n_batch = n_batch
        self.linesearch_decay, self.max_linesearch_iter = linesearch_decay, max_linesearch_iter
        self.exit_unconverged, self.detach_unconverged = exit_unconverged, detach_unconverged
        self.backprop = backprop
        if backprop is False:
            _warn_backprop()
        self.slew_rate_penalty, self.prev_ctrl = slew_rate_penalty, prev_ctrl
        self.not_improved_lim, self.best_cost_eps = not_improved_lim, best_cost_eps
        self.diff_rule = diff_rule
        self.last_info: SolverInfo | None = None
        problem.native_options(self)

    def _policy(self) -> str:
        """mpc.pytorch's handling of unconverged elements as an ``on_unconverged`` policy."""
        if self.detach_unconverged and self.exit_unconverged:
            return "raise"
        if self.verbose < 0:
            return "ignore"
        return "zero_grad" if self.detach_unconverged else "warn"

    def forward(
        self, x_init: Tensor, cost: QuadCost | nn.Module, dx: LinDx | nn.Module
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Solve the batch of problems.

        Args:
            x_init: [B, n] initial states.
            cost: a ``QuadCost``, or a module cost(tau [N, n+m]) -> [N] applied to every step.
            dx: a ``LinDx``, or a module dx(x [N, n], u [N, m]) -> [N, n] (with
                ``grad_input(x, u) -> (R [N, n, n], S [N, n, m])`` for ``ANALYTIC``).

        Returns:
            x [T, B, n], u [T, B, m] and costs [B], the objective of each trajectory.
        """
        if not isinstance(x_init, Tensor) or x_init.dim() != 2 or x_init.shape[1] != self.n_state:
            expected = f"[B, n_state] = [B, {self.n_state}]"
            raise ValueError(f"x_init: expected shape {expected}, received {received(x_init)}")
        batch = x_init.shape[0]
        if self.n_batch is not None and self.n_batch != batch:
            raise ValueError(
                f"n_batch: expected the batch size of x_init ({batch}), received {self.n_batch}"
            )
        solution = problem.solve(x_init, cost, dx, self)
        info = self.last_info = solution.info
        info.enforce(self._policy())
        x, u, costs = solution.x[..., -self.n_state :], solution.u, solution.cost
        if self.detach_unconverged and not info.all_converged:
            keep = info.converged
            x = torch.where(keep.view(-1, 1, 1), x, x.detach())
            u = torch.where(keep.view(-1, 1, 1), u, u.detach())
            costs = torch.where(keep, costs, costs.detach())
        if self.verbose >= 1:
            logger.info(
                "mpc: %d of %d elements converged in at most %d iterations, max residual %.2e, "
                "mean cost %.4e",
                int(info.converged.sum()),
                batch,
                int(info.iterations.max()),
                float(info.residual.max()),
                float(costs.detach().mean()),
            )
        return x.transpose(0, 1), u.transpose(0, 1), costs

    def solve_lqr_subproblem(
        self,
        x_init: Tensor,
        C: Tensor,
        c: Tensor,
        F: Tensor,
        f: Tensor | None,
        cost: QuadCost | nn.Module,
        dynamics: LinDx | nn.Module,
        x: Tensor,
        u: Tensor,
        no_op_forward: bool = False,
    ) -> tuple[Tensor, ...]:
        """One box-iLQR step of this MPC's settings on the model (C, c, F, f) around (x, u).

        See ``mpc_policy.compat.lqr_step.LQRStep`` for the arguments and the return value;
        the slew-rate penalty is not applied here (``forward`` applies it).
        """
        if self.slew_rate_penalty is not None:
            raise ValueError(
                f"slew_rate_penalty: expected None for solve_lqr_subproblem, received "
                f"{self.slew_rate_penalty!r} (forward() applies the penalty)"
            )
        names = ("u_lower", "u_upper", "u_zero_I", "delta_u", "linesearch_decay")
        settings = {name: getattr(self, name) for name in (*names, "max_linesearch_iter")}
        step = LQRStep(
            self.n_state,
            self.n_ctrl,
            self.T,
            true_cost=cost,
            true_dynamics=dynamics,
            current_x=x,
            current_u=u,
            no_op_forward=no_op_forward,
            **settings,
        )
        return step(x_init, C, c, F, f)

    def approximate_cost(
        self, x: Tensor, u: Tensor, Cf: nn.Module, diff: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Quadratic model 1/2 tau' C_t tau + c_t' tau of a cost module along a trajectory.

        Args:
            x: [T, B, n] states.
            u: [T, B, m] controls.
            Cf: row-wise cost module cost(tau [N, n+m]) -> [N].
            diff: keep the graph to the module's parameters.

        Returns:
            Hessians C [T, B, n+m, n+m], linear terms c = grad - C tau [T, B, n+m] and the
            costs [T, B] at the trajectory.
        """
        C, c, costs = quadratize(problem.RowCost(Cf), x.transpose(0, 1), u.transpose(0, 1), diff)
        return C.transpose(0, 1), c.transpose(0, 1), costs.transpose(0, 1)

    def linearize_dynamics(
        self, x: Tensor, u: Tensor, dynamics: nn.Module, diff: bool
    ) -> tuple[Tensor, Tensor]:
        """Affine model x_{t+1} ~ F_t tau_t + f_t of a dynamics module along a trajectory.

        Args:
            x: [T, B, n] states.
            u: [T, B, m] controls.
            dynamics: module dx(x [N, n], u [N, m]) -> [N, n].
            diff: keep the graph to the module's parameters.

        Returns:
            F [T-1, B, n, n+m] (by ``grad_method``) and f [T-1, B, n].
        """
        method = problem.jacobian_method(self.grad_method)
        dx = problem.native_dynamics(dynamics, method)
        F, f = linearize(dx, x.transpose(0, 1), u.transpose(0, 1), method, diff)
        return F.transpose(0, 1), f.transpose(0, 1)


class SlewRateCost(nn.Module):
    """mpc.pytorch's ``SlewRateCost``: a row-wise cost plus 1/2 tau' slew_C[0] tau.

    Args:
        cost: row-wise cost module cost(tau [N, n+m]) -> [N] on the true tau = [x; u].
        slew_C: [T, B, 2m+n, 2m+n] (or [T, 2m+n, 2m+n]) penalty matrices on the augmented
            tau = [u_prev; x; u]; only the first step's is used (the penalty is
            time-invariant): row i of a call gets batch element i's.
        n_state, n_ctrl: n and m.
    """

    def __init__(self, cost: nn.Module, slew_C: Tensor, n_state: int, n_ctrl: int) -> None:
        super().__init__()
        self.cost, self.slew_C = cost, slew_C
        self.n_state, self.n_ctrl = n_state, n_ctrl

    def forward(self, tau: Tensor) -> Tensor:
        """Costs [N] of augmented rows tau [N, 2m+n]."""
        P = self.slew_C[0]  # [B, d, d] (one per row) or [d, d]
        Ptau = (P @ tau.unsqueeze(-1)).squeeze(-1) if P.dim() == 3 else tau @ P.transpose(0, 1)
        penalty = 0.5 * (Ptau * tau).sum(-1)
        return self.cost(tau[:, self.n_ctrl :]) + penalty

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Not available, as in mpc.pytorch (a cost has no dynamics Jacobian)."""
        raise NotImplementedError("SlewRateCost.grad_input: a cost module has no grad_input")
