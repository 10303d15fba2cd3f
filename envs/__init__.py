"""Gymnasium environments and their differentiable dynamics, registered on import.

    import gymnasium, mpc_policy
    env = gymnasium.make("mpc_policy/Pendulum-v0")        # also CartPole-v0, WindyPendulum-v0

Each environment steps with the torch dynamics module that an MPC differentiates through
(``PendulumDynamics``, ``CartPoleDynamics``, ``WindyPendulumDynamics``), rewards the negative
of the task's stage cost (``pendulum_cost()``, ``cartpole_cost()``) and is truncated by
``gymnasium.make``'s ``TimeLimit`` after ``MAX_EPISODE_STEPS[env_id]`` steps. Each system is
also a ``System`` record (``mpc_policy.envs.registry``): ``get_system("pendulum")`` gives its
id, dynamics, parameters, cost and bound; ``register_system`` adds one of your own.
"""

from __future__ import annotations

from mpc_policy.envs.base import DynamicsEnv
from mpc_policy.envs.cartpole import CartPoleDynamics, CartPoleEnv, cartpole_cost, cartpole_state
from mpc_policy.envs.model import SystemDynamics
from mpc_policy.envs.params import CartPoleParams, PendulumParams, WindyPendulumParams
from mpc_policy.envs.pendulum import PendulumDynamics, PendulumEnv, pendulum_cost, pendulum_state
from mpc_policy.envs.registry import SYSTEMS, System, get_system, register_system, system_names
from mpc_policy.envs.systems import CARTPOLE, PENDULUM, WINDY_PENDULUM
from mpc_policy.envs.windy_pendulum import WindyPendulumDynamics, WindyPendulumEnv

__all__ = [
    "ENTRY_POINTS",
    "MAX_EPISODE_STEPS",
    "SYSTEMS",
    "CartPoleDynamics",
    "CartPoleEnv",
    "CartPoleParams",
    "DynamicsEnv",
    "PendulumDynamics",
    "PendulumEnv",
    "PendulumParams",
    "System",
    "SystemDynamics",
    "WindyPendulumDynamics",
    "WindyPendulumEnv",
    "WindyPendulumParams",
    "cartpole_cost",
    "cartpole_state",
    "get_system",
    "pendulum_cost",
    "pendulum_state",
    "register_envs",
    "register_system",
    "system_names",
]

# the ids of the built-in systems (``mpc_policy.envs.systems``), as Gymnasium registers them
ENTRY_POINTS = {
    system.env_id: system.entry_point
    for system in (PENDULUM, CARTPOLE, WINDY_PENDULUM)
    if isinstance(system.entry_point, str)
}
MAX_EPISODE_STEPS = {
    system.env_id: system.max_episode_steps for system in (PENDULUM, CARTPOLE, WINDY_PENDULUM)
}


def register_envs() -> None:
    """Register the built-in environments under the ``mpc_policy/`` namespace; idempotent
    (an id already in the registry is left as it is, so re-importing neither fails nor
    warns). Importing this package does it."""
    for system in (PENDULUM, CARTPOLE, WINDY_PENDULUM):
        register_system(system)
