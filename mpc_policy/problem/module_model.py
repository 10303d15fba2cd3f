"""A cost module and a dynamics module as the ``Model`` that box-DDP solves.

The solver sees a problem time-major (x (T, B, n), u (T, B, m)); the user's modules are
batch-first and called through ``mpc_policy.problem.contract`` (dynamics on flattened rows, every
return checked). Derivatives come from ``mpc_policy.problem.linearize``; ``restrict`` gives the
problem of a part of the batch, or None when a module cannot tell.
"""

from __future__ import annotations

from torch import Tensor

from mpc_policy.options import MPCOptions
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics
from mpc_policy.problem.linearize import cost_derivatives, dynamics_curvature, dynamics_jacobian
from mpc_policy.problem.restriction import restrictable

__all__ = ["ModuleModel"]


class ModuleModel:
    """A cost module and a dynamics module as a ``Model`` for box-DDP (time-major).

    The modules are called through the contract of ``mpc_policy.problem.contract`` (dynamics on
    flattened rows, every return checked).
    """

    def __init__(
        self,
        cost: CheckedCost,
        dynamics: CheckedDynamics,
        options: MPCOptions,
        create_graph: bool,
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
            row_copies=True,
        )

    def curvature(self, x: Tensor, u: Tensor, lam: Tensor) -> Tensor | None:
        """(T-1, B, d, d) sum_i lam_{t+1,i} d2 f_i / d tau_t2 at the trajectory, for costates
        lam (T, B, n): the dynamics' part of the Lagrangian's Hessian (Newton steps).

        None where Newton steps are off: with finite-difference Jacobians (the model need
        not be differentiable) and in an unrolled solve (its graph would run through them).
        """
        if self.create_graph or self.options.jacobian == "finite_diff":
            return None
        return dynamics_curvature(self.dynamics, x[:-1], u[:-1], lam[1:], row_copies=True)[2]

    def step(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        return self.dynamics(x, u)

    def restrict(self, rows: Tensor, batch: int) -> ModuleModel | None:
        """The problem of the batch elements ``rows`` (k,) of ``batch``, or None when a
        module cannot be restricted safely (``restriction.restrictable``)."""
        cost = restrictable(self.cost.module, batch, rows)
        dynamics = restrictable(self.dynamics.module, batch, rows)
        if cost is None or dynamics is None:
            return None
        checked = CheckedDynamics(
            dynamics, self.dynamics.n_state, self.dynamics.n_ctrl, rows.numel()
        )
        return ModuleModel(CheckedCost(cost), checked, self.options, self.create_graph)
