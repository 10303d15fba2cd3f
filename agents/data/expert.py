"""The MPC expert of the imitation experiments: true dynamics, task cost, nominal plans.

The expert of the paper's imitation experiments (Amos et al., 2018, section 5.3) is an MPC
with the true dynamics and the task cost: for a batch of states x it returns the nominal
action sequence

    u_{1:T}(x) = argmin_u  sum_t cost(x_t, u_t)  s.t.  x_1 = x, x_{t+1} = f(x_t, u_t),
                 -u_max <= u_t <= u_max,

with horizon T = 20. It is a ``Planner`` (``mpc_policy.agents.data.rollouts``): in a rollout it
acts in receding horizon, warm-started with its previous plan shifted by one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy import MPC, Solution
from mpc_policy.envs.model import SystemDynamics
from mpc_policy.envs.registry import System, get_system

__all__ = ["SWING_UP_RESTARTS", "MPCExpert", "shift_plan"]

# multi-start levels (fractions of the control bound) that swing both systems up from hanging
SWING_UP_RESTARTS = (1.0, -1.0)


def shift_plan(u: Tensor) -> Tensor:
    """Warm start for the next receding-horizon solve: drop u_1 and repeat u_T.

    Args:
        u: (B, T, m) the previous nominal action sequences.

    Returns:
        (B, T, m) the sequences u_2, ..., u_T, u_T.
    """
    return torch.cat([u[:, 1:], u[:, -1:]], dim=1)


class MPCExpert(nn.Module):
    """An MPC with fixed (true) dynamics and cost that plans nominal action sequences.

    Args:
        dynamics: dynamics module (moved to ``dtype``; its parameters are frozen).
        cost: cost module (same treatment).
        control_bound: the controls lie in [-control_bound, control_bound].
        horizon: planning horizon T (states including x_1).
        dtype: dtype of the solve (float64 by default: tight tolerances converge).
        restarts: multi-start. Constant control levels, as fractions of the bound in
            [-1, 1], from which the problem is solved too, besides ``u_init``; each state
            keeps its lowest-cost plan. The planning problem is nonconvex: from a hanging
            pendulum or cart-pole, a solve from zeros (or from the shifted previous plan)
            stays in a local minimum near the bottom (hanging at rest is even a stationary
            point), while one from a full-force sequence finds the swing-up;
            ``SWING_UP_RESTARTS`` = (1, -1) swings both up from hanging. Empty (default): a
            single solve, like the paper's expert, which a learner's MPC started the same
            way reproduces exactly at the true parameters.
        **options: ``MPCOptions`` fields; the expert's defaults are ``jacobian="analytic"``
            (the modules' own Jacobians) and ``on_unconverged="ignore"`` (convergence is
            reported per step in the rollouts instead of warning at every step).
    """

    def __init__(
        self,
        dynamics: SystemDynamics,
        cost: nn.Module,
        control_bound: float,
        horizon: int = 20,
        dtype: torch.dtype = torch.float64,
        restarts: Sequence[float] = (),
        **options: Any,
    ) -> None:
        super().__init__()
        if not control_bound > 0:
            raise ValueError(f"control_bound: expected a positive float, received {control_bound}")
        if not all(-1.0 <= level <= 1.0 for level in restarts):
            raise ValueError(f"restarts: expected levels in [-1, 1], received {list(restarts)}")
        self.control_bound = float(control_bound)
        self.restarts = tuple(float(level) for level in restarts)
        self.dynamics = dynamics.to(dtype).requires_grad_(False)
        self.cost = cost.to(dtype).requires_grad_(False)
        self.dtype = dtype
        self.n_state = int(dynamics.n_state)
        self.n_ctrl = int(dynamics.n_ctrl)
        self.horizon = horizon
        options = {"jacobian": "analytic", "on_unconverged": "ignore", **options}
        self.mpc = MPC(self.n_state, self.n_ctrl, horizon, -control_bound, control_bound, **options)

    @classmethod
    def for_system(
        cls,
        system: str | System,
        horizon: int = 20,
        dtype: torch.dtype = torch.float64,
        *,
        env_params: Mapping[str, float] | None = None,
        **options: Any,
    ) -> MPCExpert:
        """The expert of a registered system (``mpc_policy.envs.registry``: "pendulum",
        "cartpole", "windy_pendulum" or one of yours) with its true dynamics (with
        ``env_params`` overrides), task cost and actuator bound; other arguments as in the
        constructor."""
        spec = get_system(system)
        dynamics = spec.true_dynamics(env_params, dtype=dtype)
        return cls(dynamics, spec.task_cost(dtype), spec.control_bound, horizon, dtype, **options)

    def plan(self, x_init: Tensor, u_init: Tensor | None = None) -> Solution:
        """Solve the MPC problem for a batch of states (no gradients).

        Args:
            x_init: (B, n) initial states (cast to the expert's dtype).
            u_init: (B, T, m) warm start, e.g. ``shift_plan`` of the previous plan; zeros
                if None. With ``restarts``, the constant sequences are tried as well.

        Returns:
            The ``Solution``: x (B, T, n), u (B, T, m), cost (B,), info (of the plan kept).
        """
        x_init = torch.as_tensor(x_init).to(self.dtype)
        if x_init.dim() != 2 or x_init.shape[1] != self.n_state:
            raise ValueError(
                f"x_init: expected shape (B, {self.n_state}), received {tuple(x_init.shape)}"
            )
        B, T, m = x_init.shape[0], self.horizon, self.n_ctrl
        u_init = torch.zeros(B, T, m, dtype=self.dtype) if u_init is None else u_init
        if tuple(u_init.shape) != (B, T, m):
            raise ValueError(
                f"u_init: expected shape (B, T, m) = ({B}, {T}, {m}), "
                f"received {tuple(u_init.shape)}"
            )
        guesses = [u_init.to(self.dtype)] + [
            torch.full((B, T, m), level * self.control_bound, dtype=self.dtype)
            for level in self.restarts
        ]
        with torch.no_grad():
            solution = self.mpc(
                x_init.repeat(len(guesses), 1), self.cost, self.dynamics, torch.cat(guesses)
            )
        if not self.restarts:
            return solution
        # row k * B + b solved state b from guess k: keep each state's cheapest plan
        costs = solution.cost.nan_to_num(nan=float("inf"))  # a non-finite guess is never best
        best = costs.view(len(guesses), B).argmin(0) * B + torch.arange(B)
        return Solution(
            solution.x[best], solution.u[best], solution.cost[best], solution.info.index(best)
        )

    def forward(self, x_init: Tensor, u_init: Tensor | None = None) -> Tensor:
        """Nominal action sequences (B, T, m) for states x_init (B, n)."""
        return self.plan(x_init, u_init).u
