"""Pendulum swing-up: differentiable dynamics, task cost and Gymnasium environment.

The MPC state is x = (cos th, sin th, th_dot) with th = 0 upright and counter-clockwise
positive (the tip sits at (-l sin th, l cos th)); the control is the torque u. One step of
``dt`` is Gymnasium Pendulum-v1's semi-implicit Euler update of a uniform rod:

    th_ddot = 3 g / (2 l) sin th + 3 u / (m l^2)
    th_dot' = clip(th_dot + th_ddot dt, -max_speed, max_speed)
    th'     = th + th_dot' dt,          x' = (cos th', sin th', th_dot')

with th = atan2(sin th, cos th). The task cost is
(cos th - 1)^2 + sin^2 th + 0.1 th_dot^2 + 0.001 u^2.

Gradient note: where the velocity clip is active, torch.clamp passes no gradient, so the
next velocity does not depend on the state, the torque or the parameters there (its
Jacobian row is zero): a linearization at such a point sees no control authority over the
velocity. Gymnasium clips at 8 rad/s and so do we by default; ``max_speed=None`` gives a
smooth model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost

from .base import UNBOUNDED, DynamicsEnv
from .model import (
    SystemDynamics,
    angle_and_partials,
    check_inputs,
    clip,
    in_dtype,
    stack_columns,
    stack_jacobian,
)
from .params import PendulumParams, as_params
from .rendering import Canvas

__all__ = ["PendulumDynamics", "PendulumEnv", "pendulum_cost", "pendulum_state"]


def pendulum_state(theta: float, theta_dot: float) -> np.ndarray:
    """The MPC state (3,) float64 (cos th, sin th, th_dot) of an angle and a velocity."""
    return np.array([np.cos(theta), np.sin(theta), theta_dot], dtype=np.float64)


def pendulum_cost(
    *, learn_weights: bool = True, learn_goal: bool = True, dtype: torch.dtype | None = None
) -> GoalWeightedCost:
    """The pendulum's task cost: weights (1, 1, 0.1, 0.001) on (cos, sin, th_dot, u),
    goal (1, 0, 0) upright at rest and control goal 0."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype),
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype),
        learn_weights=learn_weights,
        learn_goal=learn_goal,
    )


class PendulumDynamics(SystemDynamics):
    """Pendulum-v1's dynamics on x = (cos th, sin th, th_dot), u = (torque,).

    ``forward(x (..., 3), u (..., 1)) -> (..., 3)`` on any (broadcastable) leading shape, in
    the input's dtype. The physical constants ``gravity``, ``mass`` and ``length`` are
    ``nn.Parameter`` scalars; ``dt`` and ``max_speed`` are fixed. The torque is not clipped
    here: the MPC's box bounds and the environment's action clipping keep it in range.

    Args:
        params: constants: a ``PendulumParams`` or a mapping of some of its fields
            (``{"mass": 1.2}``); ``PendulumParams()`` (the true values) by default.
        dtype: dtype of the parameters (default: torch's default dtype). Pass float64 for
            exact true values: ``.double()`` on a float32 module keeps float32 rounding.
    """

    n_state = 3
    n_ctrl = 1
    numpy_step_exact = True

    def __init__(
        self,
        params: PendulumParams | Mapping[str, Any] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        params = as_params(PendulumParams, params)
        self.params = params
        self.dt = params.dt
        self.max_speed = params.max_speed
        self.gravity = nn.Parameter(torch.tensor(float(params.gravity), dtype=dtype))
        self.mass = nn.Parameter(torch.tensor(float(params.mass), dtype=dtype))
        self.length = nn.Parameter(torch.tensor(float(params.length), dtype=dtype))

    def _coefficients(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """th_ddot = a sin th + b u: the scalars a = 3 g / (2 l) and b = 3 / (m l^2).

        Formed once per call on the scalar parameters, so that each step costs few
        operations on the rows (the solver calls the model hundreds of times a solve).
        """
        g, m, l = in_dtype(dtype, (self.gravity, self.mass, self.length))
        return 1.5 * g / l, 3.0 / (m * l * l)

    def angular_acceleration(self, theta: Tensor, theta_dot: Tensor, torque: Tensor) -> Tensor:
        """th_ddot (...) at angle, velocity and torque (...)."""
        a, b = self._coefficients(theta.dtype)
        return torch.addcmul(b * torque, a, torch.sin(theta))

    def acceleration_partials(
        self, theta: Tensor, theta_dot: Tensor, torque: Tensor
    ) -> tuple[Tensor, Tensor | float, Tensor]:
        """Derivatives of th_ddot with respect to th, th_dot and the torque."""
        a, b = self._coefficients(theta.dtype)
        return a * torch.cos(theta), 0.0, b

    def compiled_twin(self) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | None:
        """The compiled solver's description of this module: its kind, its current
        parameters (each () or (B,)) and its fixed constants (dt, max_speed; inf = no clip),
        read at every solve (``mpc_policy.solve.compiled_path``). None for a subclass, whose
        dynamics this description may not match."""
        speed = math.inf if self.max_speed is None else float(self.max_speed)
        constants = (float(self.dt), speed)
        if type(self) is PendulumDynamics:
            return "pendulum", (self.gravity, self.mass, self.length), constants
        return None

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state (..., 3) for x (..., 3) = (cos th, sin th, th_dot), u (..., 1)."""
        check_inputs(type(self).__name__, x, u, self.n_state, self.n_ctrl)
        cos, sin, theta_dot = x.unbind(-1)
        theta = torch.atan2(sin, cos)
        accel = self.angular_acceleration(theta, theta_dot, u[..., 0])
        theta_dot_next = torch.add(theta_dot, accel, alpha=self.dt)
        if self.max_speed is not None:
            theta_dot_next = theta_dot_next.clamp(-self.max_speed, self.max_speed)
        theta_next = torch.add(theta, theta_dot_next, alpha=self.dt)
        return torch.stack((torch.cos(theta_next), torch.sin(theta_next), theta_dot_next), -1)

    def numpy_angular_acceleration(
        self, theta: np.ndarray, theta_dot: np.ndarray, torque: np.ndarray
    ) -> np.ndarray:
        """``angular_acceleration`` in numpy (float64 arrays (...))."""
        g, m, l = self.scalar_values(("gravity", "mass", "length"))
        return 3.0 / (m * l * l) * torque + 1.5 * g / l * np.sin(theta)

    def numpy_step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``forward`` in numpy: x (..., 3), u (..., 1) float64 -> (..., 3)."""
        theta = np.arctan2(x[..., 1], x[..., 0])
        theta_dot = x[..., 2]
        accel = self.numpy_angular_acceleration(theta, theta_dot, u[..., 0])
        theta_dot_next = theta_dot + self.dt * accel
        if self.max_speed is not None:
            theta_dot_next = clip(theta_dot_next, self.max_speed)
        theta_next = theta + self.dt * theta_dot_next
        return stack_columns((np.cos(theta_next), np.sin(theta_next), theta_dot_next))

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Analytic Jacobian (..., 3, 4) of the next state with respect to [x; u].

        Differentiable with respect to the parameters (built from torch operations), and
        equal to autograd's, including the zero velocity row where the clip is active.
        """
        shape = check_inputs(type(self).__name__, x, u, self.n_state, self.n_ctrl)
        cos, sin, theta_dot = x.unbind(-1)
        torque = u[..., 0]
        theta, theta_c, theta_s = angle_and_partials(cos, sin)
        accel = self.angular_acceleration(theta, theta_dot, torque)
        a_theta, a_theta_dot, a_torque = self.acceleration_partials(theta, theta_dot, torque)
        dt = self.dt
        theta_dot_next = torch.add(theta_dot, accel, alpha=dt)
        active: Tensor | float = 1.0
        if self.max_speed is not None:
            inside = (theta_dot_next >= -self.max_speed) & (theta_dot_next <= self.max_speed)
            active = inside.to(x.dtype)
            theta_dot_next = theta_dot_next.clamp(-self.max_speed, self.max_speed)
        theta_next = torch.add(theta, theta_dot_next, alpha=dt)
        # d th_dot' / d(cos, sin, th_dot, u)
        w_row: list[Tensor | float] = [
            active * dt * a_theta * theta_c,
            active * dt * a_theta * theta_s,
            active * (1.0 + dt * a_theta_dot),
            active * dt * a_torque,
        ]
        # d th' / d(cos, sin, th_dot, u): th' = th + dt th_dot'
        th_row = [theta_c + dt * w_row[0], theta_s + dt * w_row[1], dt * w_row[2], dt * w_row[3]]
        cos_next, sin_next = torch.cos(theta_next), torch.sin(theta_next)
        rows: list[list[Tensor | float]] = [
            [-sin_next * d for d in th_row],
            [cos_next * d for d in th_row],
            w_row,
        ]
        return stack_jacobian(rows, shape, x)


class PendulumEnv(DynamicsEnv):
    """Inverted-pendulum swing-up with the dynamics of ``PendulumDynamics``.

    ## Description
    Gymnasium's Pendulum-v1 (a uniform rod of mass m and length l pivoting at one end,
    g 10, m 1, l 1, dt 0.05, torque at most 2, velocity clipped to 8) stepped by the torch
    module the MPC differentiates through, with the paper's task cost and starting states
    (Amos et al., 2018, section 5.3). Angle 0 is upright, counter-clockwise positive.

    ## Action Space
    ``Box(-max_torque, max_torque, (1,), float32)``: the torque (N m), default bound 2.
    Larger actions are clipped; a wrong shape or a non-finite action raises ValueError.

    ## Observation Space
    ``Box((-1, -1, -max_speed), (1, 1, max_speed), (3,), float32)``: (cos th, sin th,
    th_dot), which is also the MPC state (``env.unwrapped.state`` holds it in float64).

    ## Rewards
    r = -[(cos th - 1)^2 + sin^2 th + 0.1 th_dot^2 + 0.001 u^2] at the pre-step state,
    i.e. minus ``pendulum_cost()``; at most 0 (upright, at rest, no torque).

    ## Starting State
    th ~ U(-pi/2, pi/2) and th_dot ~ U(-1, 1); th ~ U(-pi, pi) with ``full_circle=True``
    (constructor or reset option). ``reset(options={"state": x})`` sets x exactly.

    ## Episode End
    Never terminates. ``gymnasium.make("mpc_policy/Pendulum-v0")`` truncates after 200 steps.

    ## Arguments
    - ``render_mode``: None, "rgb_array" or "human".
    - ``params``: a ``PendulumParams`` or a mapping of some of its fields, e.g.
      ``gymnasium.make("mpc_policy/Pendulum-v0", params={"mass": 1.2})`` (plain data, so
      the spec round-trips through ``EnvSpec.to_json``); true values by default.
    - ``full_circle``: start anywhere on the circle instead of the upper half.

    ## Version History
    - v0: initial version.
    """

    params_class: ClassVar[type[PendulumParams]] = PendulumParams

    def __init__(
        self,
        render_mode: str | None = None,
        params: PendulumParams | Mapping[str, Any] | None = None,
        full_circle: bool = False,
    ) -> None:
        params = as_params(self.params_class, params)
        dynamics = self._make_dynamics(params)
        self.params = params
        self.full_circle = bool(full_circle)
        speed = UNBOUNDED if params.max_speed is None else params.max_speed
        self.render_scale = self.render_size[0] / (4.4 * params.length)
        super().__init__(
            dynamics,
            pendulum_cost(learn_weights=False, learn_goal=False, dtype=torch.float64),
            params.max_torque,
            np.array([1.0, 1.0, speed]),
            render_mode,
        )

    def _make_dynamics(self, params: PendulumParams) -> PendulumDynamics:
        return PendulumDynamics(params, dtype=torch.float64)

    def _sample_state(self, options: dict[str, Any]) -> np.ndarray:
        full_circle = bool(options.pop("full_circle", self.full_circle))
        theta_range = np.pi if full_circle else np.pi / 2
        theta = self.np_random.uniform(-theta_range, theta_range)
        theta_dot = self.np_random.uniform(-1.0, 1.0)
        return pendulum_state(theta, theta_dot)

    def _draw(self, canvas: Canvas) -> None:
        cos, sin, _ = self.state
        l = self.params.length
        canvas.fill((255, 255, 255))
        canvas.rod((0.0, 0.0), (-l * sin, l * cos), 0.2 * l, (204, 77, 77))
        canvas.circle((0.0, 0.0), 0.05 * l, (0, 0, 0))
        if self.last_action is not None:
            # torque bar under the pivot: right for counter-clockwise
            share = float(self.last_action[0]) / self.params.max_torque
            canvas.rod((0.0, -1.8 * l), (share * l, -1.8 * l), 0.06 * l, (77, 77, 204))
