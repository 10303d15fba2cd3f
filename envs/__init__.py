"""Gymnasium environments and their differentiable dynamics, registered on import.

    import gymnasium, mpc_policy
    env = gymnasium.make("mpc_policy/Pendulum-v0")        # also CartPole-v0, WindyPendulum-v0

Each environment steps with the torch dynamics module that an MPC differentiates through
(``PendulumDynamics``, ``CartPoleDynamics``, ``WindyPendulumDynamics``), rewards the negative
of the task's stage cost (``pendulum_cost()``, ``cartpole_cost()``) and is truncated by
``gymnasium.make``'s ``TimeLimit`` after ``MAX_EPISODE_STEPS[env_id]`` steps.
"""

from __future__ import annotations

import gymnasium

from mpc_policy.envs.base import DynamicsEnv
from mpc_policy.envs.cartpole import CartPoleDynamics, CartPoleEnv, cartpole_cost, cartpole_state
from mpc_policy.envs.model import SystemDynamics
from mpc_policy.envs.params import CartPoleParams, PendulumParams, WindyPendulumParams
from mpc_policy.envs.pendulum import PendulumDynamics, PendulumEnv, pendulum_cost, pendulum_state
from mpc_policy.envs.windy_pendulum import WindyPendulumDynamics, WindyPendulumEnv

__all__ = [
    "ENTRY_POINTS",
    "MAX_EPISODE_STEPS",
    "CartPoleDynamics",
    "CartPoleEnv",
    "CartPoleParams",
    "DynamicsEnv",
    "PendulumDynamics",
    "PendulumEnv",
    "PendulumParams",
    "SystemDynamics",
    "WindyPendulumDynamics",
    "WindyPendulumEnv",
    "WindyPendulumParams",
    "cartpole_cost",
    "cartpole_state",
    "pendulum_cost",
    "pendulum_state",
    "register_envs",
]

ENTRY_POINTS = {
    "mpc_policy/Pendulum-v0": "mpc_policy.envs.pendulum:PendulumEnv",
    "mpc_policy/CartPole-v0": "mpc_policy.envs.cartpole:CartPoleEnv",
    "mpc_policy/WindyPendulum-v0": "mpc_policy.envs.windy_pendulum:WindyPendulumEnv",
}
# 200 steps of 0.05 s: Pendulum-v1's limit, and 10 s for the cart-pole swing-up
MAX_EPISODE_STEPS = dict.fromkeys(ENTRY_POINTS, 200)


def register_envs() -> None:
    """Register the environments under the ``mpc_policy/`` namespace; idempotent (an id
    already in the registry is left as it is, so re-importing neither fails nor warns)."""
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id, entry_point=entry_point, max_episode_steps=MAX_EPISODE_STEPS[env_id]
            )


register_envs()
