"""The three built-in systems as ``System`` records: the pendulum, the cart-pole and the
windy pendulum (Amos et al., 2018, sections 5.3 and 5.4).

The pendulum moves by th_ddot = 3 g/(2 l) sin th + 3 u/(m l^2): only g/l and m l^2 are
identifiable from its motion, not g, m, l. The cart-pole's four parameters all are. The
windy pendulum is learned with the simple pendulum's model, which cannot represent it (the
paper's non-realizable experiment).
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor, nn

from . import ENTRY_POINTS, MAX_EPISODE_STEPS
from .cartpole import CartPoleDynamics, cartpole_cost
from .params import CartPoleParams, PendulumParams, WindyPendulumParams
from .pendulum import PendulumDynamics, pendulum_cost
from .registry import System, register_system
from .windy_pendulum import WindyPendulumDynamics

__all__ = ["CARTPOLE", "PENDULUM", "WINDY_PENDULUM", "pendulum_identifiable"]


PENDULUM_ID, CARTPOLE_ID, WINDY_PENDULUM_ID = ENTRY_POINTS  # the ids, in this order


def pendulum_identifiable(dynamics: nn.Module) -> dict[str, Tensor]:
    """g/l and m l^2 of a pendulum model: what its motion determines."""
    named = dict(dynamics.named_parameters())
    g, m, l = named["gravity"], named["mass"], named["length"]
    return {"g_over_l": g / l, "m_l2": m * l * l}


def pendulum_angle(state: np.ndarray) -> float:
    """|th| (rad) of a pendulum state (cos th, sin th, th_dot): 0 upright."""
    return abs(math.atan2(float(state[1]), float(state[0])))


def cartpole_angle(state: np.ndarray) -> float:
    """|th| (rad) of the pole of a cart-pole state (p, p_dot, cos th, sin th, th_dot)."""
    return abs(math.atan2(float(state[3]), float(state[2])))


PENDULUM = register_system(
    System(
        name="pendulum",
        env_id=PENDULUM_ID,
        dynamics=PendulumDynamics,
        params=PendulumParams,
        cost=pendulum_cost,
        control_bound=PendulumParams().max_torque,
        identifiable=pendulum_identifiable,
        goal_error=pendulum_angle,
        entry_point=ENTRY_POINTS[PENDULUM_ID],
        max_episode_steps=MAX_EPISODE_STEPS[PENDULUM_ID],
    )
)
CARTPOLE = register_system(
    System(
        name="cartpole",
        env_id=CARTPOLE_ID,
        dynamics=CartPoleDynamics,
        params=CartPoleParams,
        cost=cartpole_cost,
        control_bound=CartPoleParams().max_force,
        goal_error=cartpole_angle,
        entry_point=ENTRY_POINTS[CARTPOLE_ID],
        max_episode_steps=MAX_EPISODE_STEPS[CARTPOLE_ID],
    )
)
WINDY_PENDULUM = register_system(
    System(
        name="windy_pendulum",
        env_id=WINDY_PENDULUM_ID,
        dynamics=WindyPendulumDynamics,
        params=WindyPendulumParams,
        cost=pendulum_cost,
        control_bound=WindyPendulumParams().max_torque,
        model=PendulumDynamics,
        model_params=PendulumParams,
        identifiable=pendulum_identifiable,
        goal_error=pendulum_angle,
        entry_point=ENTRY_POINTS[WINDY_PENDULUM_ID],
        max_episode_steps=MAX_EPISODE_STEPS[WINDY_PENDULUM_ID],
    )
)
