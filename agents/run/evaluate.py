"""Roll a policy out in its system's environment: episode returns, success rate, optional GIF.

The episodes run side by side (``mpc_policy.agents.data.rollouts.run_episodes``: one batched plan
per step, receding horizon, warm-started). An episode succeeds when it ends within
``success_threshold`` of the task's goal, as the system's record measures it
(``System.goal_error``: the pole's angle from upright, in radians, for the built-in ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mpc_policy.envs.extras import import_optional
from mpc_policy.envs.registry import System, get_system

from ..data.expert import MPCExpert
from ..data.rollouts import Planner, run_episodes

__all__ = ["EvaluationResult", "evaluate_policy", "save_gif"]


@dataclass
class EvaluationResult:
    """Returns (undiscounted), final distances to the goal and successes per episode."""

    returns: list[float]
    final_errors: list[float]
    successes: list[bool]
    unconverged_fraction: float | None
    gif: str | None = None

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


def evaluate_policy(
    policy: nn.Module | Planner,
    system: str | System,
    n_episodes: int,
    *,
    seed: int = 10_000,
    env_params: dict[str, float] | None = None,
    max_episode_steps: int | None = None,
    success_angle: float = 0.2,
    gif_path: str | Path | None = None,
    gif_every: int = 2,
    progress: bool = False,
) -> EvaluationResult:
    """Run ``n_episodes`` episodes of the system's environment, episode i reset with seed + i.

    The expert plans from the exact float64 state, any other planner from the observation.

    Args:
        policy: a ``Planner``: ``MPCPolicy``, ``MPCExpert``, ``SequenceNetwork``, ...
        system: a registered system's name (or its record).
        n_episodes: number of episodes, >= 1.
        seed: seed of the first episode's reset.
        env_params: overrides of the environment's physical parameters.
        max_episode_steps: override of the registered time limit.
        success_angle: an episode succeeds if it ends within this distance of the goal
            (``System.goal_error``; radians from upright for the pole systems).
        gif_path: write a GIF of episode 0 there (every ``gif_every``-th frame).
        progress: show a progress bar over the steps.
    """
    spec = get_system(system)
    if not isinstance(policy, Planner):
        raise TypeError(
            "policy: expected a planner with plan(x, u_init) (an MPCPolicy, MPCExpert or "
            f"SequenceNetwork), received {type(policy).__name__}"
        )
    env_kwargs = {"params": spec.true_params(env_params)} if env_params else None
    rollouts = run_episodes(
        policy,
        spec.env_id,
        n_episodes,
        seed=seed,
        inputs="state" if isinstance(policy, MPCExpert) else "observation",
        max_episode_steps=max_episode_steps,
        env_kwargs=env_kwargs,
        render_every=gif_every if gif_path else None,
        progress=progress,
        description=f"evaluate {type(policy).__name__}",
    )
    errors = [spec.goal_error(state) for state in rollouts.final_states]
    gif = save_gif(rollouts.frames, gif_path, fps=20.0 / gif_every) if gif_path else None
    return EvaluationResult(
        returns=rollouts.returns().tolist(),
        final_errors=errors,
        successes=[error <= success_angle for error in errors],
        unconverged_fraction=rollouts.unconverged_fraction(),
        gif=None if gif is None else str(gif),
    )


def save_gif(frames: list[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write (H, W, 3) uint8 frames as a looping GIF, with imageio if it is installed,
    else with Pillow (the ``render`` extra; without either, ``MissingExtraError``)."""
    if not frames:
        raise ValueError("frames: expected at least one frame, received none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration_ms = 1000.0 / fps
    try:
        import imageio.v2 as imageio
    except ImportError:
        Image = import_optional("PIL.Image", "render", "writing a GIF")

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    else:
        arrays: list[Any] = list(frames)  # imageio types its argument as a list of ArrayLike
        imageio.mimsave(path, arrays, duration=duration_ms, loop=0)
    return path
