"""One batched-episode runner for expert collection and policy evaluation.

A ``Planner`` maps a batch of inputs x (B, n) (MPC states or observations) and an optional
warm start u_init (B, T, m) to a plan: an object with the nominal action sequences
``u`` (B, T, m) and the solver's ``info`` (a ``SolverInfo``, or None for a planner without
a solver). ``MPCPolicy``, ``MPCExpert`` and ``SequenceNetwork`` all are. ``run_episodes``
runs E episodes side by side, one batched ``plan`` per step, in receding horizon: apply
u_1, observe, re-plan warm-started with the episode's previous plan shifted by one step
(``shift_plan``). Episode i is reset with ``seed + i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import gymnasium
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mpc_policy.envs.base import DynamicsEnv
from mpc_policy.solution import SolverInfo

from .expert import shift_plan

__all__ = ["PlanResult", "Planner", "Rollouts", "run_episodes"]


class PlanResult(Protocol):
    """What ``Planner.plan`` returns: the plan and the solver's report."""

    @property
    def u(self) -> Tensor:
        """(B, T, m) nominal action sequences."""

    @property
    def info(self) -> SolverInfo | None:
        """Per-row convergence report, or None (no solver)."""


@runtime_checkable
class Planner(Protocol):
    """``plan(x (B, n), u_init (B, T, m) or None) -> PlanResult``."""

    def plan(self, x: Tensor, u_init: Tensor | None = None, /) -> PlanResult: ...


@dataclass(frozen=True)
class Rollouts:
    """The steps of a batch of episodes, episode after episode (N steps in all, horizon T).

    Attributes:
        observations: (N, n_obs) float32 observations o_t the planner acted on.
        next_observations: (N, n_obs) float32 observations after the step.
        actions: (N, m) float32 actions sent to the environment (the first planned action).
        rewards: (N,) float64 rewards.
        terminated: (N,) bool.
        truncated: (N,) bool (the time limit).
        nominal_actions: (N, T, m) float64 planned action sequences u_{1:T}.
        states: (N, n) float64 MPC states x_t before the step.
        next_states: (N, n) float64 MPC states after the step.
        episodes: (N,) int64 episode index of each step.
        converged: (N,) bool whether each step's solve reached a fixed point (True for a
            planner without a solver).
        solved: whether the planner reported solves (``info`` not None).
        final_states: (E, n) float64 the state each episode ended in.
        frames: RGB frames of episode 0 (when rendered).
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
    solved: bool
    final_states: np.ndarray
    frames: list[np.ndarray]

    def returns(self) -> np.ndarray:
        """(E,) undiscounted return of each episode."""
        return np.bincount(self.episodes, weights=self.rewards, minlength=len(self.final_states))

    def unconverged_fraction(self) -> float | None:
        """The fraction of solves that stopped before a fixed point (None: no solver)."""
        return float((~self.converged).mean()) if self.solved else None


def _inner(env: gymnasium.Env) -> DynamicsEnv:
    inner = env.unwrapped
    if not isinstance(inner, DynamicsEnv):
        raise TypeError(f"env: expected a DynamicsEnv inside, received {type(inner).__name__}")
    return inner


def _frame(env: gymnasium.Env) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"env.render(): expected an RGB array, received {type(frame).__name__}")
    return frame


def _per_episode(
    reset_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None, n_episodes: int
) -> list[dict[str, Any] | None]:
    if reset_options is None or isinstance(reset_options, dict):
        return [reset_options] * n_episodes
    options = list(reset_options)
    if len(options) != n_episodes:
        raise ValueError(
            f"reset_options: expected one dict per episode ({n_episodes}), received {len(options)}"
        )
    return options


def run_episodes(
    planner: Planner,
    env_id: str,
    n_episodes: int,
    *,
    seed: int = 0,
    inputs: Literal["state", "observation"] = "state",
    n_state: int | None = None,
    max_episode_steps: int | None = None,
    reset_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    render_every: int | None = None,
    progress: bool = False,
    description: str = "episodes",
) -> Rollouts:
    """Run a planner in receding horizon on ``n_episodes`` episodes of a registered env.

    Args:
        planner: ``MPCExpert``, ``MPCPolicy``, ``SequenceNetwork`` or any ``Planner``.
        env_id: a registered id whose unwrapped env is a ``DynamicsEnv``.
        n_episodes: number of episodes, >= 1.
        seed: seed of the first episode's reset.
        inputs: what the planner sees: the exact float64 MPC "state" (the expert) or the
            float32 "observation" (a learned policy).
        n_state: the planner's state size, checked against the environment's (if given).
        max_episode_steps: override of the registered time limit.
        reset_options: options for every reset, or one entry per episode (e.g.
            ``{"state": x}`` to start from given states).
        env_kwargs: keyword arguments of ``gymnasium.make`` (e.g. ``params``).
        render_every: render episode 0 every this many steps (and its final state).
        progress: show a progress bar over the batched steps.
        description: the progress bar's label.

    Returns:
        The steps as ``Rollouts``, episode 0 first.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes: expected an integer >= 1, received {n_episodes!r}")
    if inputs not in ("state", "observation"):
        raise ValueError(f"inputs: expected 'state' or 'observation', received {inputs!r}")
    options = _per_episode(reset_options, n_episodes)
    make_kwargs = dict(env_kwargs or {})
    if max_episode_steps is not None:
        make_kwargs["max_episode_steps"] = max_episode_steps
    environments = [
        gymnasium.make(
            env_id,
            render_mode="rgb_array" if i == 0 and render_every else None,
            **make_kwargs,
        )
        for i in range(n_episodes)
    ]
    try:
        raw = [_inner(env) for env in environments]
        if n_state is not None and raw[0].n_state != n_state:
            raise TypeError(f"env: expected a DynamicsEnv with {n_state} states, received {raw[0]}")
        limit = environments[0].spec.max_episode_steps if environments[0].spec else None
        with tqdm(
            total=limit, desc=description, unit="step", disable=not progress, leave=False
        ) as bar:
            return _loop(planner, environments, raw, seed, options, inputs, render_every, bar)
    finally:
        for env in environments:
            env.close()


def _loop(
    planner: Planner,
    environments: list[gymnasium.Env],
    raw: list[DynamicsEnv],
    seed: int,
    reset_options: list[dict[str, Any] | None],
    inputs: str,
    render_every: int | None,
    bar: tqdm,
) -> Rollouts:
    observations = [
        env.reset(seed=seed + i, options=reset_options[i])[0] for i, env in enumerate(environments)
    ]
    steps: list[list[dict[str, Any]]] = [[] for _ in environments]
    frames: list[np.ndarray] = []
    plans: Tensor | None = None
    solved = False
    active = list(range(len(environments)))
    step = 0
    while active:
        if render_every and 0 in active and step % render_every == 0:
            frames.append(_frame(environments[0]))
        states = np.stack([raw[i].state for i in active])
        x = states if inputs == "state" else np.stack([observations[i] for i in active])
        with torch.no_grad():
            plan = planner.plan(torch.from_numpy(x), None if plans is None else shift_plan(plans))
        info = plan.info
        solved = solved or info is not None
        nominal = plan.u.detach().cpu()
        still_active: list[int] = []
        for row, i in enumerate(active):
            action = nominal[row, 0].numpy().astype(np.float32)
            next_obs, reward, terminated, truncated, _ = environments[i].step(action)
            steps[i].append(
                {
                    "observations": observations[i],
                    "next_observations": next_obs,
                    "actions": action,
                    "rewards": float(reward),
                    "terminated": bool(terminated),
                    "truncated": bool(truncated),
                    "nominal_actions": nominal[row].numpy().astype(np.float64),
                    "states": states[row],
                    "next_states": raw[i].state,
                    "episodes": i,
                    "converged": True if info is None else bool(info.converged[row]),
                }
            )
            observations[i] = next_obs
            if not (terminated or truncated):
                still_active.append(row)
        plans = nominal[still_active]
        active = [active[row] for row in still_active]
        step += 1
        bar.update(1)
    if render_every:
        frames.append(_frame(environments[0]))
    flat = [s for episode in steps for s in episode]
    arrays = {key: np.stack([s[key] for s in flat]) for key in flat[0]}
    final = np.stack([env.state for env in raw])
    return Rollouts(**arrays, solved=solved, final_states=final, frames=frames)
