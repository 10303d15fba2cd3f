"""MPC experts for the three systems, and the collection of their rollouts.

The expert of the paper's imitation experiments (Amos et al., 2018, section 5.3) is an MPC
with the true dynamics and the task cost: for a batch of states x it returns the nominal
action sequence

    u_{1:T}(x) = argmin_u  sum_t cost(x_t, u_t)  s.t.  x_1 = x, x_{t+1} = f(x_t, u_t),
                 -u_max <= u_t <= u_max,

with horizon T = 20. In a rollout it acts in receding horizon: apply u_1, observe the next
state, re-plan, warm-started with the previous plan shifted by one step. The dataset file
format is not decided here: ``collect_rollouts`` returns plain arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy import MPC, Solution
from mpc_policy.envs.base import DynamicsEnv
from mpc_policy.envs.cartpole import CartPoleDynamics, cartpole_cost
from mpc_policy.envs.model import SystemDynamics
from mpc_policy.envs.params import CartPoleParams, PendulumParams, WindyPendulumParams
from mpc_policy.envs.pendulum import PendulumDynamics, pendulum_cost
from mpc_policy.envs.windy_pendulum import WindyPendulumDynamics

__all__ = [
    "SWING_UP_RESTARTS",
    "SYSTEMS",
    "ExpertRollouts",
    "MPCExpert",
    "System",
    "collect_rollouts",
    "shift_plan",
]

# multi-start levels (fractions of the control bound) that swing both systems up from hanging
SWING_UP_RESTARTS = (1.0, -1.0)


@dataclass(frozen=True)
class System:
    """What an expert needs to know about a system: its true model, cost and bound."""

    env_id: str
    make_dynamics: Callable[..., SystemDynamics]
    make_cost: Callable[..., nn.Module]
    control_bound: float


SYSTEMS = {
    "pendulum": System(
        "mpc_policy/Pendulum-v0", PendulumDynamics, pendulum_cost, PendulumParams().max_torque
    ),
    "cartpole": System(
        "mpc_policy/CartPole-v0", CartPoleDynamics, cartpole_cost, CartPoleParams().max_force
    ),
    "windy_pendulum": System(
        "mpc_policy/WindyPendulum-v0",
        WindyPendulumDynamics,
        pendulum_cost,
        WindyPendulumParams().max_torque,
    ),
}


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
        system: str,
        horizon: int = 20,
        dtype: torch.dtype = torch.float64,
        **options: Any,
    ) -> MPCExpert:
        """The expert of one of ``SYSTEMS`` ("pendulum", "cartpole", "windy_pendulum") with
        its true dynamics, task cost and actuator bound; other arguments as in the
        constructor."""
        if system not in SYSTEMS:
            raise ValueError(f"system: expected one of {sorted(SYSTEMS)}, received {system!r}")
        spec = SYSTEMS[system]
        dynamics = spec.make_dynamics(dtype=dtype)
        cost = spec.make_cost(learn_weights=False, learn_goal=False, dtype=dtype)
        return cls(dynamics, cost, spec.control_bound, horizon, dtype, **options)

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


@dataclass(frozen=True)
class ExpertRollouts:
    """Expert transitions, episode after episode (N steps in all, horizon T).

    Attributes:
        observations: (N, n_obs) float32 observations o_t the expert acted on.
        next_observations: (N, n_obs) float32 observations after the step.
        actions: (N, m) float32 actions sent to the environment (the first nominal action).
        rewards: (N,) float64 rewards.
        terminated: (N,) bool.
        truncated: (N,) bool (the time limit).
        nominal_actions: (N, T, m) float64 nominal action sequences u_{1:T}(x_t).
        states: (N, n) float64 MPC states x_t the expert planned from.
        next_states: (N, n) float64 MPC states after the step.
        episodes: (N,) int64 episode index of each step.
        converged: (N,) bool whether the MPC solve of each step reached a fixed point.
    """

    observations: np.ndarray
    next_observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    nominal_actions: np.ndarray
    states: np.ndarray
    next_states: np.ndarray
    episodes: np.ndarray
    converged: np.ndarray


def collect_rollouts(
    expert: MPCExpert,
    env_id: str,
    n_episodes: int,
    *,
    seed: int = 0,
    max_episode_steps: int | None = None,
    reset_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> ExpertRollouts:
    """Run the expert in receding horizon on ``n_episodes`` episodes of a registered env.

    The episodes run side by side so that each step is one batched MPC solve; episode i is
    reset with ``seed + i``. Every solve after the first is warm-started with the episode's
    previous plan shifted by one step.

    Args:
        expert: the planner.
        env_id: a registered id whose unwrapped env is a ``DynamicsEnv`` with the expert's
            state, e.g. "mpc_policy/Pendulum-v0".
        n_episodes: number of episodes, >= 1.
        seed: seed of the first episode's reset.
        max_episode_steps: override of the registered time limit.
        reset_options: options for every reset, or one entry per episode (e.g.
            ``{"state": x}`` to start from given states).
        env_kwargs: keyword arguments of ``gymnasium.make``.

    Returns:
        The steps as ``ExpertRollouts``, episode 0 first.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes: expected an integer >= 1, received {n_episodes!r}")
    if reset_options is None or isinstance(reset_options, dict):
        per_episode: list[dict[str, Any] | None] = [reset_options] * n_episodes
    else:
        per_episode = list(reset_options)
        if len(per_episode) != n_episodes:
            raise ValueError(
                f"reset_options: expected one dict per episode ({n_episodes}), "
                f"received {len(per_episode)}"
            )
    make_kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = max_episode_steps
    environments = [gymnasium.make(env_id, **make_kwargs) for _ in range(n_episodes)]
    try:
        return _run(expert, environments, seed, per_episode)
    finally:
        for env in environments:
            env.close()


def _run(
    expert: MPCExpert,
    environments: list[gymnasium.Env],
    seed: int,
    reset_options: list[dict[str, Any] | None],
) -> ExpertRollouts:
    raw: list[DynamicsEnv] = []
    for env in environments:
        inner = env.unwrapped
        if not isinstance(inner, DynamicsEnv) or inner.n_state != expert.n_state:
            raise TypeError(
                f"env: expected a DynamicsEnv with {expert.n_state} states, received {inner}"
            )
        raw.append(inner)
    observations = [
        env.reset(seed=seed + i, options=reset_options[i])[0] for i, env in enumerate(environments)
    ]
    steps: list[list[dict[str, Any]]] = [[] for _ in environments]
    plans: Tensor | None = None
    active = list(range(len(environments)))
    while active:
        states = np.stack([raw[i].state for i in active])
        solution = expert.plan(
            torch.from_numpy(states), None if plans is None else shift_plan(plans)
        )
        nominal = solution.u.cpu().numpy()
        still_active: list[int] = []
        for row, i in enumerate(active):
            action = nominal[row, 0].astype(np.float32)
            next_obs, reward, terminated, truncated, _ = environments[i].step(action)
            steps[i].append(
                {
                    "observations": observations[i],
                    "next_observations": next_obs,
                    "actions": action,
                    "rewards": float(reward),
                    "terminated": bool(terminated),
                    "truncated": bool(truncated),
                    "nominal_actions": nominal[row],
                    "states": states[row],
                    "next_states": raw[i].state,
                    "episodes": i,
                    "converged": bool(solution.info.converged[row]),
                }
            )
            observations[i] = next_obs
            if not (terminated or truncated):
                still_active.append(row)
        plans = solution.u[still_active]
        active = [active[row] for row in still_active]
    flat = [step for episode in steps for step in episode]
    return ExpertRollouts(**{key: np.stack([s[key] for s in flat]) for key in flat[0]})
