"""Roll a policy out in its environment: episode returns, success rate, optional GIF.

The episodes run side by side (one batched solve per step). An MPC controller acts in
receding horizon: apply u_1, observe, re-plan warm-started with its previous plan shifted by
one step. An episode succeeds when the pole ends within ``success_angle`` of upright.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import nn

from mpc_policy.agents.logging import summarize_warnings
from mpc_policy.agents.nn_baseline import SequenceNetwork
from mpc_policy.agents.systems import system_params
from mpc_policy.envs.base import DynamicsEnv
from mpc_policy.envs.expert import SYSTEMS, MPCExpert, shift_plan
from mpc_policy.policy import MPCPolicy

__all__ = ["EvaluationResult", "evaluate_policy", "save_gif"]

# indices of (cos th, sin th) of the pole in each system's MPC state
UPRIGHT_COORDINATES = {"pendulum": (0, 1), "windy_pendulum": (0, 1), "cartpole": (2, 3)}


@dataclass
class EvaluationResult:
    """Returns (undiscounted), final pole angles (rad) and successes per episode."""

    returns: list[float]
    final_angles: list[float]
    successes: list[bool]
    unconverged_fraction: float | None
    gif: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))

    def to_dict(self) -> dict[str, Any]:
        summary = {
            "mean_return": self.mean_return,
            "std_return": float(np.std(self.returns)),
            "success_rate": self.success_rate,
        }
        return {**summary, **asdict(self)}


class _Controller:
    """Acts for a batch of episodes; an MPC keeps each episode's plan as its warm start."""

    def __init__(self, policy: nn.Module, n_episodes: int) -> None:
        if not isinstance(policy, MPCPolicy | MPCExpert | SequenceNetwork):
            raise TypeError(
                "policy: expected an MPCPolicy, MPCExpert or SequenceNetwork, received "
                f"{type(policy).__name__}"
            )
        self.policy = policy
        self.plans: torch.Tensor | None = None
        self.n_episodes = n_episodes
        self.converged: list[torch.Tensor] = []

    def act(self, obs: np.ndarray, states: np.ndarray, rows: list[int]) -> np.ndarray:
        """Actions (len(rows), m) for the active episodes ``rows``."""
        if isinstance(self.policy, SequenceNetwork):
            with torch.no_grad():
                return self.policy(torch.from_numpy(obs)).numpy()
        # the expert plans from the exact float64 state, the learned policy from observations
        inputs = torch.from_numpy(states if isinstance(self.policy, MPCExpert) else obs)
        horizon = self.policy.horizon
        if self.plans is None:
            m = _control_size(self.policy)
            self.plans = torch.zeros(self.n_episodes, horizon, m, dtype=torch.float64)
        with torch.no_grad():
            solution = self.policy.plan(inputs, shift_plan(self.plans[rows]).to(inputs.dtype))
        self.plans[rows] = solution.u.detach().to(torch.float64)
        self.converged.append(solution.info.converged)
        return solution.u[:, 0].numpy()

    def unconverged_fraction(self) -> float | None:
        if not self.converged:
            return None
        return float((~torch.cat(self.converged)).double().mean())


def _control_size(policy: MPCPolicy | MPCExpert) -> int:
    size = policy.n_ctrl
    if size is None:
        raise ValueError("policy: its control size is unknown (see MPCPolicy's n_ctrl)")
    return int(size)


def _state(env: gymnasium.Env) -> np.ndarray:
    inner = env.unwrapped
    if not isinstance(inner, DynamicsEnv):
        raise TypeError(f"env: expected a DynamicsEnv inside, received {type(inner).__name__}")
    return inner.state


def _frame(env: gymnasium.Env) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"env.render(): expected an RGB array, received {type(frame).__name__}")
    return frame


def pole_angle(system: str, state: np.ndarray) -> float:
    """The pole's angle from upright (rad, in [-pi, pi]) in an MPC state."""
    i, j = UPRIGHT_COORDINATES[system]
    return math.atan2(float(state[j]), float(state[i]))


def evaluate_policy(
    policy: nn.Module,
    system: str,
    n_episodes: int,
    *,
    seed: int = 10_000,
    env_params: dict[str, float] | None = None,
    max_episode_steps: int | None = None,
    success_angle: float = 0.2,
    gif_path: str | Path | None = None,
    gif_every: int = 2,
) -> EvaluationResult:
    """Run ``n_episodes`` episodes of the system's environment, episode i reset with seed + i.

    Args:
        policy: an ``MPCPolicy``, an ``MPCExpert`` or a ``SequenceNetwork``.
        system: "pendulum", "cartpole" or "windy_pendulum".
        n_episodes: number of episodes, >= 1.
        seed: seed of the first episode's reset.
        env_params: overrides of the environment's physical parameters.
        max_episode_steps: override of the registered time limit.
        success_angle: an episode succeeds if its final pole angle is within this (rad).
        gif_path: write a GIF of episode 0 there (every ``gif_every``-th frame).
    """
    if system not in SYSTEMS:
        raise ValueError(f"system: expected one of {sorted(SYSTEMS)}, received {system!r}")
    if n_episodes < 1:
        raise ValueError(f"n_episodes: expected an integer >= 1, received {n_episodes}")
    spec = SYSTEMS[system]
    kwargs: dict[str, Any] = {}
    if env_params:
        kwargs["params"] = system_params(system, env_params)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    envs = [
        gymnasium.make(
            spec.env_id, render_mode="rgb_array" if i == 0 and gif_path else None, **kwargs
        )
        for i in range(n_episodes)
    ]
    controller = _Controller(policy, n_episodes)
    frames: list[np.ndarray] = []
    returns = np.zeros(n_episodes)
    with summarize_warnings(f"evaluation of {type(policy).__name__}: "):
        try:
            obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
            active = list(range(n_episodes))
            step = 0
            while active:
                if gif_path and 0 in active and step % gif_every == 0:
                    frames.append(_frame(envs[0]))
                states = np.stack([_state(envs[i]) for i in active])
                actions = controller.act(np.stack([obs[i] for i in active]), states, active)
                still = []
                for row, i in enumerate(active):
                    obs[i], reward, terminated, truncated, _ = envs[i].step(
                        actions[row].astype(np.float32)
                    )
                    returns[i] += reward
                    if not (terminated or truncated):
                        still.append(i)
                active = still
                step += 1
            if gif_path:
                frames.append(_frame(envs[0]))
            angles = [pole_angle(system, _state(env)) for env in envs]
        finally:
            for env in envs:
                env.close()
    gif = save_gif(frames, gif_path, fps=20.0 / gif_every) if gif_path else None
    return EvaluationResult(
        returns=returns.tolist(),
        final_angles=angles,
        successes=[abs(a) <= success_angle for a in angles],
        unconverged_fraction=controller.unconverged_fraction(),
        gif=None if gif is None else str(gif),
    )


def save_gif(frames: list[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write (H, W, 3) uint8 frames as a looping GIF, with imageio if it is installed,
    else with Pillow."""
    if not frames:
        raise ValueError("frames: expected at least one frame, received none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration_ms = 1000.0 / fps
    try:
        import imageio.v2 as imageio
    except ImportError:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    else:
        imageio.mimsave(path, frames, duration=duration_ms, loop=0)
    return path
