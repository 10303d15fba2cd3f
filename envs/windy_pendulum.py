"""Windy pendulum: the pendulum plus pivot damping and a steady horizontal wind.

The expert of the paper's non-realizable experiment (Amos et al., 2018, section 5.4): the
learner's model class is the simple pendulum (``PendulumDynamics``: g, m, l), which has no
term for either addition, so no choice of its parameters reproduces these dynamics. Same
state, control, update scheme, velocity clip and task cost as ``mpc_policy.envs.pendulum``; only the
angular acceleration changes:

    th_ddot = 3 g / (2 l) sin th + 3 u / (m l^2) - 3 b th_dot / (m l^2) - 3 F_w cos th / (m l)

where b is the viscous damping coefficient at the pivot (torque -b th_dot) and F_w the wind:
a horizontal force on the tip (-l sin th, l cos th), positive to the right, whose torque
about the pivot is -l cos th F_w. Both torques act on the rod's inertia m l^2 / 3, as the
torque u does in Pendulum-v1's update. Wind and gravity together act like a gravity tilted
by atan(2 F_w / (m g)): the pendulum balances leaning into the wind, and holding it exactly
upright costs a steady torque F_w l.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .model import in_dtype
from .params import PendulumParams, WindyPendulumParams, as_params
from .pendulum import PendulumDynamics, PendulumEnv
from .rendering import Canvas

__all__ = ["WindyPendulumDynamics", "WindyPendulumEnv"]


class WindyPendulumDynamics(PendulumDynamics):
    """The pendulum's dynamics with damping b and wind F_w, on x = (cos th, sin th, th_dot).

    ``forward(x (..., 3), u (..., 1)) -> (..., 3)`` and ``jacobian(x, u) -> (..., 3, 4)`` as
    in ``PendulumDynamics``; the ``nn.Parameter``s are ``gravity``, ``mass``, ``length``,
    ``damping`` and ``wind``.

    Args:
        params: constants: a ``WindyPendulumParams`` or a mapping of some of its fields;
            ``WindyPendulumParams()`` (the true values) by default.
        dtype: dtype of the parameters (default: torch's default dtype).
    """

    numpy_step_exact = True

    def __init__(
        self,
        params: WindyPendulumParams | Mapping[str, Any] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        params = as_params(WindyPendulumParams, params)
        super().__init__(params, dtype=dtype)
        self.damping = nn.Parameter(self.gravity.new_tensor(float(params.damping)))
        self.wind = nn.Parameter(self.gravity.new_tensor(float(params.wind)))

    def compiled_twin(self) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | None:
        """As ``PendulumDynamics.compiled_twin``, with the damping and the wind."""
        speed = math.inf if self.max_speed is None else float(self.max_speed)
        if type(self) is WindyPendulumDynamics:
            params = (self.gravity, self.mass, self.length, self.damping, self.wind)
            return "windy_pendulum", params, (float(self.dt), speed)
        return None

    def _constants(self, like: Tensor) -> tuple[Tensor, ...]:
        params = (self.gravity, self.mass, self.length, self.damping, self.wind)
        return in_dtype(like.dtype, params)

    def angular_acceleration(self, theta: Tensor, theta_dot: Tensor, torque: Tensor) -> Tensor:
        """th_ddot (...) at angle, velocity and torque (...)."""
        g, m, l, b, wind = self._constants(theta)
        inertia = m * l * l / 3.0
        return (
            3.0 * g / (2.0 * l) * theta.sin()
            + (torque - b * theta_dot - wind * l * theta.cos()) / inertia
        )

    def numpy_angular_acceleration(
        self, theta: np.ndarray, theta_dot: np.ndarray, torque: np.ndarray
    ) -> np.ndarray:
        """``angular_acceleration`` in numpy (float64 arrays (...))."""
        g, m, l, b, wind = self.scalar_values(("gravity", "mass", "length", "damping", "wind"))
        inertia = m * l * l / 3.0
        return (
            3.0 * g / (2.0 * l) * np.sin(theta)
            + (torque - b * theta_dot - wind * l * np.cos(theta)) / inertia
        )

    def acceleration_partials(
        self, theta: Tensor, theta_dot: Tensor, torque: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Derivatives of th_ddot with respect to th, th_dot and the torque."""
        g, m, l, b, wind = self._constants(theta)
        inertia = m * l * l / 3.0
        d_theta = 3.0 * g / (2.0 * l) * theta.cos() + wind * l * theta.sin() / inertia
        return d_theta, -b / inertia, 1.0 / inertia


class WindyPendulumEnv(PendulumEnv):
    """Pendulum swing-up against damping and wind (``WindyPendulumDynamics``).

    ## Description
    The pendulum of ``PendulumEnv`` (g 10, m 1, l 1, dt 0.05, torque at most 2, velocity
    clipped to 8) with viscous damping b = 0.1 N m s/rad at the pivot and a steady
    horizontal wind F_w = 1 N on the tip, blowing to the right. The expert of the paper's
    non-realizable imitation experiment (section 5.4): a simple-pendulum model cannot fit it.

    ## Action Space
    ``Box(-max_torque, max_torque, (1,), float32)``: the torque (N m), default bound 2.
    Larger actions are clipped; a wrong shape or a non-finite action raises ValueError.

    ## Observation Space
    ``Box((-1, -1, -max_speed), (1, 1, max_speed), (3,), float32)``: (cos th, sin th,
    th_dot), the MPC state (``env.unwrapped.state`` holds it in float64).

    ## Rewards
    r = -[(cos th - 1)^2 + sin^2 th + 0.1 th_dot^2 + 0.001 u^2] at the pre-step state,
    i.e. minus ``pendulum_cost()``. Holding exactly upright takes the steady torque
    u = F_w l (reward -0.001 (F_w l)^2 per step).

    ## Starting State
    th ~ U(-pi/2, pi/2) and th_dot ~ U(-1, 1); th ~ U(-pi, pi) with ``full_circle=True``
    (constructor or reset option). ``reset(options={"state": x})`` sets x exactly.

    ## Episode End
    Never terminates. ``gymnasium.make("mpc_policy/WindyPendulum-v0")`` truncates after
    200 steps.

    ## Arguments
    - ``render_mode``: None, "rgb_array" or "human".
    - ``params``: a ``WindyPendulumParams`` or a mapping of some of its fields (true
      values by default; ``damping`` and ``wind`` set the two additions).
    - ``full_circle``: start anywhere on the circle instead of the upper half.

    ## Version History
    - v0: initial version.
    """

    params: WindyPendulumParams
    params_class: ClassVar[type[PendulumParams]] = WindyPendulumParams

    def _make_dynamics(self, params: PendulumParams) -> WindyPendulumDynamics:
        if not isinstance(params, WindyPendulumParams):
            raise TypeError(f"params: expected WindyPendulumParams, received {type(params)}")
        return WindyPendulumDynamics(params, dtype=torch.float64)

    def _draw(self, canvas: Canvas) -> None:
        super()._draw(canvas)
        l, wind = self.params.length, self.params.wind
        if wind != 0.0:
            # wind arrow in the top-left corner, its length growing with |F_w| up to 1.5 l
            length = min(1.5, 0.5 + abs(wind) / 2.0) * l
            start = -1.9 * l if wind > 0 else -1.9 * l + length
            end = start + length if wind > 0 else start - length
            canvas.arrow((start, 1.9 * l), (end, 1.9 * l), 0.05 * l, (77, 160, 204))
