"""Native vector environments: N copies of a ``DynamicsEnv`` stepped in one batched call.

    envs = gymnasium.make_vec("mpc_policy/Pendulum-v0", num_envs=64)   # this class
    envs = gymnasium.make_vec(..., vectorization_mode="sync")          # Gymnasium's loop

A step of all copies is one call of the dynamics' numpy twin (``SystemDynamics.numpy_twin``,
or the torch module on the (N, n) rows where there is none) and one of the stage cost, on
(N, n) states and (N, m) actions, instead of N Python steps. Everything else is Gymnasium's
``SyncVectorEnv`` of the same environments, so the same seeds give the same trajectories:
copy i is seeded with seed + i and draws its starting states from its own generator, the
time limit (``max_episode_steps``, the registered one by default) truncates each copy, and a
copy that ended is reset on the next step (``AutoresetMode.NEXT_STEP``: that step returns
its first observation, reward 0, not terminated, not truncated). ``options`` (e.g.
``{"state": x}``, ``"reset_mask"``) go to each copy's ``reset``.

The copies share one dynamics and cost module (the first copy's): parameters are the
same for all (per-copy physics: use ``vectorization_mode="sync"``). Environments whose
``step`` does more than the shared one (``CartPoleTrackEnv``'s termination) are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .base import DynamicsEnv
from .cartpole import CartPoleEnv
from .pendulum import PendulumEnv
from .windy_pendulum import WindyPendulumEnv

__all__ = [
    "CartPoleVectorEnv",
    "DynamicsVectorEnv",
    "PendulumVectorEnv",
    "WindyPendulumVectorEnv",
]


class DynamicsVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """N copies of ``env_class`` stepped together (see the module docstring).

    Args:
        num_envs: the number of copies N, >= 1.
        max_episode_steps: each copy is truncated after this many steps (None: never).
        render_mode: None, "rgb_array" or "human" for every copy (``render`` gives a tuple
            of frames, as ``SyncVectorEnv``).
        **env_kwargs: the arguments of ``env_class`` (e.g. ``params={"mass": 1.2}``).
    """

    env_class: ClassVar[type[DynamicsEnv]]

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: expected an integer >= 1, received {num_envs!r}")
        if max_episode_steps is not None and not (
            isinstance(max_episode_steps, int) and max_episode_steps >= 1
        ):
            raise ValueError(
                f"max_episode_steps: expected None or an integer >= 1, "
                f"received {max_episode_steps!r}"
            )
        if self.env_class.step is not DynamicsEnv.step:
            raise TypeError(
                f"env_class: {self.env_class.__name__} overrides step, which a batched step "
                'would skip; use gymnasium.make_vec(..., vectorization_mode="sync")'
            )
        self.envs = [self.env_class(render_mode=render_mode, **env_kwargs) for _ in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.metadata = {**first.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._states = np.zeros((num_envs, first.n_state))
        self._actions: np.ndarray | None = None
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        self._was_reset = False

    @property
    def states(self) -> np.ndarray:
        """(N, n) float64 copy of the copies' MPC states."""
        return self._states.copy()

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the copies: copy i with ``seed + i`` (or ``seed[i]``), each with ``options``;
        ``options["reset_mask"]`` (N,) bool resets only those copies."""
        super().reset(seed=seed if isinstance(seed, int) else None)
        if seed is None or isinstance(seed, int):
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"seed: expected None, an int or {self.num_envs} seeds, received {len(seeds)}"
                )
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        elif not (
            isinstance(mask, np.ndarray)
            and mask.dtype == np.bool_
            and mask.shape == (self.num_envs,)
        ):
            raise ValueError(
                f"options['reset_mask']: expected a ({self.num_envs},) bool array, "
                f"received {mask!r}"
            )
        elif not self._was_reset and not mask.all():
            raise gym.error.ResetNeeded("reset every copy once before a masked reset")
        for i in np.flatnonzero(mask):
            self.envs[i].reset(seed=seeds[i], options=options)
            self._states[i] = self.envs[i]._require_state()
        self._elapsed[mask] = 0
        self._autoreset[mask] = False
        self._was_reset = True
        return self._states.astype(np.float32), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every copy with its action row (actions (N, m), clipped to the box); copies
        that ended on the last step are reset instead."""
        if not self._was_reset:
            raise gym.error.ResetNeeded("call reset() before step()")
        first = self.envs[0]
        u = first._clipped_action(actions, (self.num_envs, first.n_ctrl))
        functions = first.step_functions
        rewards = -functions.stage_cost(self._states, u)
        self._states = functions.next_state(self._states, u)
        self._actions = u
        self._elapsed += 1
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, dtype=np.bool_)
        else:
            truncated = self._elapsed >= self.max_episode_steps
        for i in np.flatnonzero(self._autoreset):
            self.envs[i].reset()
            self._states[i] = self.envs[i]._require_state()
            self._elapsed[i] = 0
            rewards[i] = 0.0
            truncated[i] = False
        self._autoreset = terminated | truncated
        return self._states.astype(np.float32), rewards, terminated, truncated, {}

    def render(self) -> tuple[Any, ...]:
        """The copies' frames (each (height, width, 3) uint8 in "rgb_array" mode)."""
        for i, env in enumerate(self.envs):
            env.state = self._states[i]
            env.last_action = None if self._actions is None else self._actions[i].copy()
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


class PendulumVectorEnv(DynamicsVectorEnv):
    """N copies of ``PendulumEnv`` ("mpc_policy/Pendulum-v0") stepped together."""

    env_class = PendulumEnv


class CartPoleVectorEnv(DynamicsVectorEnv):
    """N copies of ``CartPoleEnv`` ("mpc_policy/CartPole-v0") stepped together."""

    env_class = CartPoleEnv


class WindyPendulumVectorEnv(DynamicsVectorEnv):
    """N copies of ``WindyPendulumEnv`` ("mpc_policy/WindyPendulum-v0") stepped together."""

    env_class = WindyPendulumEnv
