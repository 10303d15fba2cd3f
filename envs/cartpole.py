"""Cart-pole swing-up with a continuous force: dynamics, task cost and Gymnasium environment.

The MPC state is x = (p, p_dot, cos th, sin th, th_dot): cart position p, pole angle th with
th = 0 upright and positive when the pole leans right (its tip at p + 2 l sin th); the
control is the horizontal force u on the cart. The equations of motion are Gymnasium
CartPole-v1's (Barto, Sutton and Anderson's, with a pole of half-length l) and one step of
``dt`` is its explicit Euler update:

    M = m_c + m_p,    a = (u + m_p l th_dot^2 sin th) / M
    th_ddot = (g sin th - cos th a) / (l (4/3 - m_p cos^2 th / M))
    p_ddot  = a - m_p l th_ddot cos th / M
    p' = p + dt p_dot,   p_dot' = p_dot + dt p_ddot,   th' = th + dt th_dot,
    th_dot' = th_dot + dt th_ddot,   x' = (p', p_dot', cos th', sin th', th_dot')

with th = atan2(sin th, cos th). The task cost is 0.1 p^2 + 0.1 p_dot^2 + (cos th - 1)^2
+ sin^2 th + 0.1 th_dot^2 + 0.001 u^2 (the paper's, Amos et al., 2018, section 5.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost

from .base import UNBOUNDED, DynamicsEnv
from .model import (
    SystemDynamics,
    angle_and_partials,
    check_inputs,
    in_dtype,
    stack_columns,
    stack_jacobian,
)
from .params import CartPoleParams, as_params
from .rendering import Canvas

__all__ = [
    "TRACK_ENV_ID",
    "CartPoleDynamics",
    "CartPoleEnv",
    "CartPoleTrackEnv",
    "TrackLimit",
    "cartpole_cost",
    "cartpole_state",
]

# the track-limited variant's Gymnasium id (registered by ``mpc_policy.envs``, VARIANTS)
TRACK_ENV_ID = "mpc_policy/CartPoleTrack-v0"


def cartpole_state(position: float, velocity: float, theta: float, theta_dot: float) -> np.ndarray:
    """The MPC state (5,) float64 (p, p_dot, cos th, sin th, th_dot)."""
    return np.array([position, velocity, np.cos(theta), np.sin(theta), theta_dot], dtype=np.float64)


def cartpole_cost(
    *, learn_weights: bool = True, learn_goal: bool = True, dtype: torch.dtype | None = None
) -> GoalWeightedCost:
    """The cart-pole's task cost: weights (0.1, 0.1, 1, 1, 0.1, 0.001) on
    (p, p_dot, cos, sin, th_dot, u), goal (0, 0, 1, 0, 0) upright at the origin, control 0."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    return GoalWeightedCost(
        torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1, 0.001], dtype=dtype),
        torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype),
        learn_weights=learn_weights,
        learn_goal=learn_goal,
    )


class CartPoleDynamics(SystemDynamics):
    """Cart-pole dynamics on x = (p, p_dot, cos th, sin th, th_dot), u = (force,).

    ``forward(x (..., 5), u (..., 1)) -> (..., 5)`` on any (broadcastable) leading shape, in
    the input's dtype. ``gravity``, ``cart_mass``, ``pole_mass`` and ``half_length`` are
    ``nn.Parameter`` scalars; ``dt`` is fixed. The force is not clipped here (the MPC's
    bounds and the environment's action clipping do that).

    Args:
        params: constants: a ``CartPoleParams`` or a mapping of some of its fields;
            ``CartPoleParams()`` (the true values) by default.
        dtype: dtype of the parameters (default: torch's default dtype). Pass float64 for
            exact true values: ``.double()`` on a float32 module keeps float32 rounding.
    """

    n_state = 5
    n_ctrl = 1
    numpy_step_exact = True

    def __init__(
        self,
        params: CartPoleParams | Mapping[str, Any] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        params = as_params(CartPoleParams, params)
        self.params = params
        self.dt = params.dt
        self.gravity = nn.Parameter(torch.tensor(float(params.gravity), dtype=dtype))
        self.cart_mass = nn.Parameter(torch.tensor(float(params.cart_mass), dtype=dtype))
        self.pole_mass = nn.Parameter(torch.tensor(float(params.pole_mass), dtype=dtype))
        self.half_length = nn.Parameter(torch.tensor(float(params.half_length), dtype=dtype))

    def compiled_twin(self) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | None:
        """The compiled solver's description of this module: "cartpole", its current
        parameters (g, m_c, m_p, l; each () or (B,)) and (dt,), read at every solve
        (``mpc_policy.solve.compiled_path``). None for a subclass."""
        if type(self) is CartPoleDynamics:
            params = (self.gravity, self.cart_mass, self.pole_mass, self.half_length)
            return "cartpole", params, (float(self.dt),)
        return None

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(g, m_c, m_p, l) in the dtype of ``like``."""
        params = (self.gravity, self.cart_mass, self.pole_mass, self.half_length)
        g, m_c, m_p, l = in_dtype(like.dtype, params)
        return g, m_c, m_p, l

    def accelerations(
        self, theta: Tensor, theta_dot: Tensor, force: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(p_ddot, th_ddot), each (...), at angle, angular velocity and force (...).

        With M = m_c + m_p and k = m_p l / M:

            a     = u / M + k th_dot^2 sin th
            th_dd = (g sin th - a cos th) / (4 l / 3 - k cos^2 th)
            p_dd  = a - k th_dd cos th

        the scalars formed once per call, so that each step costs few operations on the
        rows (the solver calls the model hundreds of times a solve).
        """
        g, m_c, m_p, l = self._constants(theta)
        total = m_c + m_p
        k = m_p * l / total
        sin, cos = theta.sin(), theta.cos()
        a = torch.addcmul(force / total, k * theta_dot.square(), sin)
        denominator = torch.addcmul(4.0 / 3.0 * l, k, cos.square(), value=-1.0)
        theta_acc = torch.addcmul(g * sin, cos, a, value=-1.0) / denominator
        return torch.addcmul(a, k * theta_acc, cos, value=-1.0), theta_acc

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state (..., 5) for x (..., 5) = (p, p_dot, cos th, sin th, th_dot), u (..., 1)."""
        check_inputs(type(self).__name__, x, u, self.n_state, self.n_ctrl)
        position, velocity, cos, sin, theta_dot = x.unbind(-1)
        theta = torch.atan2(sin, cos)
        cart_acc, theta_acc = self.accelerations(theta, theta_dot, u[..., 0])
        dt = self.dt
        theta_next = torch.add(theta, theta_dot, alpha=dt)
        return torch.stack(
            (
                torch.add(position, velocity, alpha=dt),
                torch.add(velocity, cart_acc, alpha=dt),
                theta_next.cos(),
                theta_next.sin(),
                torch.add(theta_dot, theta_acc, alpha=dt),
            ),
            dim=-1,
        )

    def numpy_step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``forward`` in numpy: x (..., 5), u (..., 1) float64 -> (..., 5)."""
        g, m_c, m_p, l = self.scalar_values(("gravity", "cart_mass", "pole_mass", "half_length"))
        total = m_c + m_p
        k = m_p * l / total
        position, velocity, theta_dot = x[..., 0], x[..., 1], x[..., 4]
        theta = np.arctan2(x[..., 3], x[..., 2])
        sin, cos = np.sin(theta), np.cos(theta)
        a = u[..., 0] / total + k * theta_dot * theta_dot * sin
        theta_acc = (g * sin - cos * a) / (4.0 / 3.0 * l - k * cos * cos)
        cart_acc = a - k * theta_acc * cos
        dt = self.dt
        theta_next = theta + dt * theta_dot
        return stack_columns(
            (
                position + dt * velocity,
                velocity + dt * cart_acc,
                np.cos(theta_next),
                np.sin(theta_next),
                theta_dot + dt * theta_acc,
            )
        )

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Analytic Jacobian (..., 5, 6) of the next state with respect to [x; u];
        differentiable with respect to the parameters."""
        shape = check_inputs(type(self).__name__, x, u, self.n_state, self.n_ctrl)
        _, _, cos_in, sin_in, theta_dot = x.unbind(-1)
        theta, theta_c, theta_s = angle_and_partials(cos_in, sin_in)
        force = u[..., 0]
        g, m_c, m_p, l = self._constants(x)
        total = m_c + m_p
        sin, cos = theta.sin(), theta.cos()
        a = (force + m_p * l * theta_dot**2 * sin) / total
        denominator = l * (4.0 / 3.0 - m_p * cos**2 / total)
        theta_acc = (g * sin - cos * a) / denominator
        # derivatives of a, the denominator and the accelerations w.r.t. th, th_dot and u
        a_theta = m_p * l * theta_dot**2 * cos / total
        a_theta_dot = 2.0 * m_p * l * theta_dot * sin / total
        a_force = 1.0 / total
        denominator_theta = l * 2.0 * m_p * cos * sin / total
        numerator_theta = g * cos + sin * a - cos * a_theta
        th_acc_theta = (numerator_theta - theta_acc * denominator_theta) / denominator
        th_acc_theta_dot = -cos * a_theta_dot / denominator
        th_acc_force = -cos * a_force / denominator
        coupling = m_p * l / total
        p_acc_theta = a_theta - coupling * (th_acc_theta * cos - theta_acc * sin)
        p_acc_theta_dot = a_theta_dot - coupling * cos * th_acc_theta_dot
        p_acc_force = a_force - coupling * cos * th_acc_force
        dt = self.dt
        theta_next = theta + dt * theta_dot
        # d th' / d(p, p_dot, cos, sin, th_dot, u)
        th_row: list[Tensor | float] = [0.0, 0.0, theta_c, theta_s, dt, 0.0]
        sin_next, cos_next = theta_next.sin(), theta_next.cos()
        rows: list[list[Tensor | float]] = [
            [1.0, dt, 0.0, 0.0, 0.0, 0.0],
            [
                0.0,
                1.0,
                dt * p_acc_theta * theta_c,
                dt * p_acc_theta * theta_s,
                dt * p_acc_theta_dot,
                dt * p_acc_force,
            ],
            [-sin_next * d for d in th_row],
            [cos_next * d for d in th_row],
            [
                0.0,
                0.0,
                dt * th_acc_theta * theta_c,
                dt * th_acc_theta * theta_s,
                1.0 + dt * th_acc_theta_dot,
                dt * th_acc_force,
            ],
        ]
        return stack_jacobian(rows, shape, x)


class CartPoleEnv(DynamicsEnv):
    """Cart-pole swing-up with a continuous force, stepped by ``CartPoleDynamics``.

    ## Description
    Gymnasium CartPole-v1's cart and pole (g 9.8, cart 1 kg, pole 0.1 kg, half-length
    0.5 m, explicit Euler) with a continuous force up to 100 N and a 0.05 s step, starting
    anywhere on the circle: the pole must be swung up and balanced over x = 0. These are the
    paper's cart-pole experiment settings (Amos et al., 2018, section 5.3).

    ## Action Space
    ``Box(-max_force, max_force, (1,), float32)``: the force on the cart (N), default bound
    100. Larger actions are clipped; a wrong shape or a non-finite action raises ValueError.

    ## Observation Space
    ``Box((-big, -big, -1, -1, -big), (big, big, 1, 1, big), (5,), float32)`` with big the
    largest float32: (p, p_dot, cos th, sin th, th_dot), which is also the MPC state
    (``env.unwrapped.state`` holds it in float64). The track is unbounded.

    ## Rewards
    r = -[0.1 p^2 + 0.1 p_dot^2 + (cos th - 1)^2 + sin^2 th + 0.1 th_dot^2 + 0.001 u^2] at
    the pre-step state, i.e. minus ``cartpole_cost()``; at most 0.

    ## Starting State
    p, p_dot ~ U(-0.5, 0.5), th ~ U(-pi, pi), th_dot ~ U(-1, 1).
    ``reset(options={"state": x})`` sets x exactly.

    ## Episode End
    Never terminates (no track limits, no angle limit). ``gymnasium.make(
    "mpc_policy/CartPole-v0")`` truncates after 200 steps (10 s).

    ## Arguments
    - ``render_mode``: None, "rgb_array" or "human".
    - ``params``: a ``CartPoleParams`` or a mapping of some of its fields, e.g.
      ``{"pole_mass": 0.2}`` (plain data: the spec round-trips through JSON); true values
      by default.

    ## Version History
    - v0: initial version.
    """

    render_size = (600, 400)
    render_origin = (300.0, 250.0)
    render_scale = 100.0

    def __init__(
        self,
        render_mode: str | None = None,
        params: CartPoleParams | Mapping[str, Any] | None = None,
    ) -> None:
        self.params = as_params(CartPoleParams, params)
        super().__init__(
            CartPoleDynamics(self.params, dtype=torch.float64),
            cartpole_cost(learn_weights=False, learn_goal=False, dtype=torch.float64),
            self.params.max_force,
            np.array([UNBOUNDED, UNBOUNDED, 1.0, 1.0, UNBOUNDED]),
            render_mode,
        )

    def _sample_state(self, options: dict[str, Any]) -> np.ndarray:
        position, velocity = self.np_random.uniform(-0.5, 0.5, size=2)
        theta = self.np_random.uniform(-np.pi, np.pi)
        theta_dot = self.np_random.uniform(-1.0, 1.0)
        return cartpole_state(position, velocity, theta, theta_dot)

    def _draw(self, canvas: Canvas) -> None:
        position, _, cos, sin, _ = self.state
        pole = 2.0 * self.params.half_length
        canvas.fill((255, 255, 255))
        canvas.rod((-3.2, 0.0), (3.2, 0.0), 0.01, (0, 0, 0))
        canvas.rectangle((position, 0.0), 0.5, 0.3, (0, 0, 0))
        tip = (position + pole * sin, pole * cos)
        canvas.rod((position, 0.0), tip, 0.1, (202, 152, 101))
        canvas.circle((position, 0.0), 0.05, (129, 132, 203))


class TrackLimit(nn.Module):
    """The finite track as MPC constraints: |p| <= limit, g (B, T, 2) <= 0.

    ``forward(x (B, T, 5), u (B, T, 1)) -> (B, T, 2)`` = (p - limit, -p - limit), for
    ``MPC(constraints=TrackLimit(...))``. ``limit`` is an ``nn.Parameter`` (it can be learned).

    Args:
        limit: half-length of the track (m), > 0.
        dtype: dtype of the parameter (default: torch's default dtype).
    """

    def __init__(self, limit: float, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not limit > 0:
            raise ValueError(f"limit: expected a positive track half-length, received {limit!r}")
        self.limit = nn.Parameter(torch.tensor(float(limit), dtype=dtype))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """(p - limit, -p - limit) (B, T, 2) for x (B, T, 5)."""
        position = x[..., :1]
        limit = self.limit.to(x.dtype)
        return torch.cat([position - limit, -position - limit], dim=-1)


class CartPoleTrackEnv(CartPoleEnv):
    """The cart-pole swing-up on a finite track: the cart must stay within |p| <= limit.

    ## Description
    ``CartPoleEnv`` (same dynamics, force bound and cost) whose track ends at
    p = +-``track_limit``. The MPC expert keeps the cart on it with
    ``MPC(constraints=TrackLimit(track_limit))``.

    ## Action Space
    ``Box(-max_force, max_force, (1,), float32)``, as ``CartPoleEnv``.

    ## Observation Space
    As ``CartPoleEnv``: (p, p_dot, cos th, sin th, th_dot).

    ## Rewards
    As ``CartPoleEnv``: minus ``cartpole_cost()`` at the pre-step state.

    ## Starting State
    p ~ U(-track_limit / 2, track_limit / 2), p_dot ~ U(-0.5, 0.5), th ~ U(-pi, pi),
    th_dot ~ U(-1, 1). ``reset(options={"state": x})`` sets x exactly.

    ## Episode End
    Terminates when the cart leaves the track (|p| > track_limit, ``info["off_track"]``);
    ``gymnasium.make("mpc_policy/CartPoleTrack-v0")`` truncates after 200 steps (10 s).

    ## Arguments
    - ``render_mode``: None, "rgb_array" or "human".
    - ``params``: a ``CartPoleParams`` or a mapping of some of its fields.
    - ``track_limit``: half-length of the track (m), default 1.0.

    ## Version History
    - v0: initial version.
    """

    def __init__(
        self,
        render_mode: str | None = None,
        params: CartPoleParams | Mapping[str, Any] | None = None,
        track_limit: float = 1.0,
    ) -> None:
        if not track_limit > 0:
            raise ValueError(f"track_limit: expected a positive float, received {track_limit!r}")
        self.track_limit = float(track_limit)
        super().__init__(render_mode, params)

    def _sample_state(self, options: dict[str, Any]) -> np.ndarray:
        position = self.np_random.uniform(-0.5, 0.5) * self.track_limit
        velocity = self.np_random.uniform(-0.5, 0.5)
        theta = self.np_random.uniform(-np.pi, np.pi)
        theta_dot = self.np_random.uniform(-1.0, 1.0)
        return cartpole_state(position, velocity, theta, theta_dot)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """``CartPoleEnv.step``; the episode terminates when the cart leaves the track."""
        observation, reward, _, truncated, info = super().step(action)
        off_track = bool(abs(float(self.state[0])) > self.track_limit)
        return observation, reward, off_track, truncated, {**info, "off_track": off_track}

    def _draw(self, canvas: Canvas) -> None:
        super()._draw(canvas)
        for end in (-self.track_limit, self.track_limit):
            canvas.rod((end, -0.2), (end, 0.2), 0.03, (200, 0, 0))
