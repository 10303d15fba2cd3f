"""Gymnasium environments and their differentiable dynamics, registered on import.

    import gymnasium, mpc_policy
    env = gymnasium.make("mpc_policy/Pendulum-v0")        # also CartPole-v0, WindyPendulum-v0
    envs = gymnasium.make_vec("mpc_policy/Pendulum-v0", num_envs=64)  # one batched step

Each environment steps with the torch dynamics module that an MPC differentiates through
(``PendulumDynamics``, ``CartPoleDynamics``, ``WindyPendulumDynamics``), rewards the negative
of the task's stage cost (``pendulum_cost()``, ``cartpole_cost()``) and is truncated by
``gymnasium.make``'s ``TimeLimit`` after ``MAX_EPISODE_STEPS[env_id]`` steps. Each system is
also a ``System`` record (``mpc_policy.envs.registry``): ``get_system("pendulum")`` gives its
id, dynamics, parameters, cost and bound; ``register_system`` adds one of your own.

Importing this package registers the ids (by their entry-point strings) and nothing more:
the classes below are imported when first used, so registering costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import gymnasium

if TYPE_CHECKING:
    from .base import DynamicsEnv
    from .cartpole import (
        CartPoleDynamics,
        CartPoleEnv,
        cartpole_cost,
        cartpole_state,
    )
    from .model import SystemDynamics
    from .params import CartPoleParams, PendulumParams, WindyPendulumParams
    from .pendulum import (
        PendulumDynamics,
        PendulumEnv,
        pendulum_cost,
        pendulum_state,
    )
    from .registry import (
        SYSTEMS,
        System,
        get_system,
        register_system,
        system_names,
    )
    from .vector import DynamicsVectorEnv
    from .windy_pendulum import WindyPendulumDynamics, WindyPendulumEnv

__all__ = [
    "ENTRY_POINTS",
    "MAX_EPISODE_STEPS",
    "SYSTEMS",
    "VARIANTS",
    "VECTOR_ENTRY_POINTS",
    "CartPoleDynamics",
    "CartPoleEnv",
    "CartPoleParams",
    "DynamicsEnv",
    "DynamicsVectorEnv",
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

# the built-in systems' ids; their ``System`` records (``mpc_policy.envs.systems``) use these
ENTRY_POINTS = {
    "mpc_policy/Pendulum-v0": "mpc_policy.envs.pendulum:PendulumEnv",
    "mpc_policy/CartPole-v0": "mpc_policy.envs.cartpole:CartPoleEnv",
    "mpc_policy/WindyPendulum-v0": "mpc_policy.envs.windy_pendulum:WindyPendulumEnv",
}
# native vector environments (``gymnasium.make_vec``): all copies in one batched step
VECTOR_ENTRY_POINTS = {
    "mpc_policy/Pendulum-v0": "mpc_policy.envs.vector:PendulumVectorEnv",
    "mpc_policy/CartPole-v0": "mpc_policy.envs.vector:CartPoleVectorEnv",
    "mpc_policy/WindyPendulum-v0": "mpc_policy.envs.vector:WindyPendulumVectorEnv",
}
# 200 steps of 0.05 s: Pendulum-v1's limit, and 10 s for the cart-pole swing-up
MAX_EPISODE_STEPS = dict.fromkeys(ENTRY_POINTS, 200)
# variants of the built-in systems, registered here too so that one import of the package
# is enough for gymnasium.make (the cart-pole on a finite track, ``CartPoleTrackEnv``)
VARIANTS = {"mpc_policy/CartPoleTrack-v0": "mpc_policy.envs.cartpole:CartPoleTrackEnv"}

_LAZY = {
    "DynamicsEnv": "base",
    "CartPoleDynamics": "cartpole",
    "CartPoleEnv": "cartpole",
    "cartpole_cost": "cartpole",
    "cartpole_state": "cartpole",
    "SystemDynamics": "model",
    "CartPoleParams": "params",
    "PendulumParams": "params",
    "WindyPendulumParams": "params",
    "PendulumDynamics": "pendulum",
    "PendulumEnv": "pendulum",
    "pendulum_cost": "pendulum",
    "pendulum_state": "pendulum",
    "SYSTEMS": "registry",
    "System": "registry",
    "get_system": "registry",
    "register_system": "registry",
    "system_names": "registry",
    "WindyPendulumDynamics": "windy_pendulum",
    "WindyPendulumEnv": "windy_pendulum",
    "DynamicsVectorEnv": "vector",
}


def __getattr__(name: str) -> Any:
    """The classes and functions of ``__all__`` and the submodules, imported on first use
    (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in set(_LAZY.values()) | {"systems"}:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def register_envs() -> None:
    """Register the built-in environments under the ``mpc_policy/`` namespace; idempotent
    (an id already in the registry is left as it is, so re-importing neither fails nor
    warns). Importing this package does it."""
    for env_id, entry_point in {**ENTRY_POINTS, **VARIANTS}.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point=entry_point,
                vector_entry_point=VECTOR_ENTRY_POINTS.get(env_id),
                max_episode_steps=MAX_EPISODE_STEPS.get(env_id, 200),
            )


register_envs()
