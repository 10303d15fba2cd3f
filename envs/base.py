"""The Gymnasium shell shared by the environments: numpy at the edge, torch inside.

An environment holds the MPC state x (n,) as a float64 tensor and steps it with the same
dynamics module the MPC differentiates through; the reward is the negative of the task's
stage cost module evaluated at the pre-step state and the (clipped) action,

    r_t = -cost(x_t, u_t),    x_{t+1} = dynamics(x_t, u_t),

which is also how Gymnasium's Pendulum-v1 times its reward. Time limits come from the
``TimeLimit`` wrapper that ``gymnasium.make`` adds (see ``envs/__init__.py``); the raw
environments never terminate and never truncate on their own.

A step does no torch work where it need not: a dynamics module with a numpy twin
(``SystemDynamics.numpy_twin``, the built-in systems) steps in numpy at the module's current
parameter values, and a ``GoalWeightedCost`` is evaluated in numpy; other modules step in
torch. Both paths agree to float precision (tests/test_envs.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost

from .model import SystemDynamics
from .rendering import RENDER_MODES, Canvas, Renderer

__all__ = ["DynamicsEnv", "StepFunctions"]

# observation bound for unbounded coordinates: finite, so that the checker does not warn
UNBOUNDED = float(np.finfo(np.float32).max)
_REAL = (np.dtype(np.float32), np.dtype(np.float64))  # actions checked without issubdtype


class StepFunctions:
    """The next state and the stage cost of float64 arrays, for one row or a batch of rows:
    numpy twins where the modules have them, the torch modules otherwise.

    Args:
        dynamics: the environment's dynamics module.
        cost: the environment's stage cost module.
    """

    def __init__(self, dynamics: SystemDynamics, cost: nn.Module) -> None:
        self.dynamics, self.cost = dynamics, cost
        self._cost_key: tuple[object, ...] = ()
        self._cost_values: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def next_state(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x (..., n), u (..., m) -> (..., n), all float64."""
        twin = self.dynamics.numpy_twin()
        if twin is not None:
            return twin(x, u)
        with torch.no_grad():
            return self.dynamics(torch.from_numpy(x), torch.from_numpy(u)).numpy()

    def stage_cost(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """x (..., n), u (..., m) -> (...) float64."""
        if type(self.cost) is GoalWeightedCost:
            weights, goal, linear = self._goal_cost_values(self.cost)
            tau = np.concatenate([x, u], axis=-1)
            error = tau - goal
            return (error * error) @ weights + tau @ linear
        with torch.no_grad():
            rows_x = torch.from_numpy(x).reshape(1, -1, x.shape[-1])
            rows_u = torch.from_numpy(u).reshape(1, -1, u.shape[-1])
            return self.cost(rows_x, rows_u).reshape(x.shape[:-1]).numpy()

    def _goal_cost_values(
        self, cost: GoalWeightedCost
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weights, goal, linear) as float64 arrays, read again when one changed."""
        parameters, buffers = cost._parameters, cost._buffers
        tensors: list[Tensor | None] = [parameters["raw_weights"], parameters["goal"]]
        tensors.append(buffers["linear"])
        key = tuple((id(t), t._version) for t in tensors if t is not None)
        if self._cost_values is None or key != self._cost_key:
            with torch.no_grad():
                self._cost_values = (
                    cost.weights.double().numpy().copy(),
                    cost.goal.detach().double().numpy().copy(),
                    cost.linear.double().numpy().copy(),
                )
            self._cost_key = key
        return self._cost_values


class DynamicsEnv(gym.Env[np.ndarray, np.ndarray], ABC):
    """Base class: a torch dynamics module and a cost module behind Gymnasium's API.

    Subclasses implement ``_sample_state`` (the starting-state distribution, reading and
    removing their own reset options) and ``_draw`` (one frame), and set ``render_size``,
    ``render_origin`` and ``render_scale``.

    Args:
        dynamics: the system's ``SystemDynamics``, called as ``dynamics(x (n,), u (m,))``;
            moved to float64 with gradients disabled (the environment owns it; build it in
            float64 so its true values are exact).
        cost: stage cost module ``cost(x (1, 1, n), u (1, 1, m)) -> (1, 1)``; same treatment.
        action_bound: actions lie in [-action_bound, action_bound]^m; larger ones are clipped.
        observation_bound: (n,) symmetric bound of the observation space.
        render_mode: None, "rgb_array" or "human"; drawing needs pygame, the ``render``
            extra (``pip install "mpc-policy[render]"``), asked for at the first frame.
    """

    # render_fps is 1 / dt at the default dt (0.05 s); a "human" window runs at 1 / dt
    metadata: dict[str, Any] = {"render_modes": list(RENDER_MODES), "render_fps": 20}  # noqa: RUF012
    render_size: tuple[int, int] = (500, 500)
    render_origin: tuple[float, float] = (250.0, 250.0)
    render_scale: float = 100.0

    def __init__(
        self,
        dynamics: SystemDynamics,
        cost: nn.Module,
        action_bound: float,
        observation_bound: np.ndarray,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, "
                f"received {render_mode!r}"
            )
        self.dynamics = dynamics.to(torch.float64).requires_grad_(False)
        self.cost = cost.to(torch.float64).requires_grad_(False)
        self._step_functions = StepFunctions(self.dynamics, self.cost)
        self.n_state = int(dynamics.n_state)
        self.n_ctrl = int(dynamics.n_ctrl)
        self._action_box = spaces.Box(
            -action_bound, action_bound, shape=(self.n_ctrl,), dtype=np.float32
        )
        self.action_space = self._action_box
        high = np.asarray(observation_bound, dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.render_mode = render_mode
        self._renderer = (
            None
            if render_mode is None
            else Renderer(render_mode, self.render_size, fps=1.0 / float(dynamics.dt))
        )
        self._x: np.ndarray | None = None
        self.last_action: np.ndarray | None = None

    @property
    def step_functions(self) -> StepFunctions:
        """The numpy (or torch) step of ``self.dynamics`` and ``self.cost``, following a
        reassignment of either (e.g. ``env.unwrapped.dynamics = other``)."""
        functions = self._step_functions
        if functions.dynamics is not self.dynamics or functions.cost is not self.cost:
            functions = self._step_functions = StepFunctions(self.dynamics, self.cost)
        return functions

    @property
    def state(self) -> np.ndarray:
        """(n,) float64 copy of the current MPC state."""
        return self._require_state().copy()

    @state.setter
    def state(self, value: np.ndarray) -> None:
        x = np.asarray(value, dtype=np.float64)
        if x.shape != (self.n_state,):
            raise ValueError(f"state: expected shape ({self.n_state},), received {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"state: expected finite values, received {x.tolist()}")
        self._x = x.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``options["state"]`` sets the exact (n,) MPC state; the other
        options are those of the subclass's starting-state distribution."""
        super().reset(seed=seed)
        options = dict(options or {})
        given = options.pop("state", None)
        sampled = self._sample_state(options)
        if options:
            raise ValueError(f"options: unknown reset options {sorted(options)}")
        self.state = sampled if given is None else given
        self.last_action = None
        if self.render_mode == "human":
            self.render()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the clipped action for one step of ``dt``; reward -cost(x_t, u_t)."""
        u = self._clipped_action(action)
        x = self._require_state()
        functions = self.step_functions
        cost = float(functions.stage_cost(x, u))
        self._x = functions.next_state(x, u)
        self.last_action = u
        if self.render_mode == "human":
            self.render()
        return self._observation(), -cost, False, False, {}

    def render(self) -> np.ndarray | None:
        """A (height, width, 3) uint8 frame in "rgb_array" mode; None otherwise."""
        if self._renderer is None:
            gym.logger.warn(
                "render() called without a render_mode; pass render_mode='rgb_array' "
                "to the constructor or to gymnasium.make"
            )
            return None
        self._require_state()
        return self._renderer.frame(self._draw, self.render_origin, self.render_scale)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()

    @abstractmethod
    def _sample_state(self, options: dict[str, Any]) -> np.ndarray:
        """Draw a starting state with ``self.np_random``; pop the options used."""

    @abstractmethod
    def _draw(self, canvas: Canvas) -> None:
        """Draw the current state on a fresh canvas."""

    def _require_state(self) -> np.ndarray:
        if self._x is None:
            raise gym.error.ResetNeeded("call reset() before step(), render() or state")
        return self._x

    def _observation(self) -> np.ndarray:
        return self._require_state().astype(np.float32)

    def _clipped_action(
        self, action: np.ndarray, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """The action (m,) (or of ``shape``, e.g. a batch (N, m)), checked and clipped to
        the box, in float64."""
        array = np.asarray(action)
        box = self._action_box
        shape = box.shape if shape is None else shape
        if array.shape != shape:
            raise ValueError(f"action: expected shape {shape}, received {array.shape}")
        if array.dtype not in _REAL and (
            not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array)
        ):
            raise TypeError(f"action: expected real numbers, received dtype {array.dtype}")
        if not np.isfinite(array).all():
            raise ValueError(f"action: expected finite values, received {array.tolist()}")
        return np.minimum(np.maximum(array, box.low), box.high).astype(np.float64)
