"""The three systems as an experiment sees them: true parameters, task cost and expert.

Thin typed access to ``envs``: a system's physical parameters with overrides (the same
values go to the environment and to the expert), its task cost, and its MPC expert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from mpc_policy.costs import GoalWeightedCost
from mpc_policy.envs.expert import SYSTEMS, MPCExpert
from mpc_policy.envs.params import CartPoleParams, PendulumParams, WindyPendulumParams

__all__ = ["PARAMS", "expert_for", "system_params", "task_cost"]

SystemParams = PendulumParams | CartPoleParams
PARAMS: dict[str, type[SystemParams]] = {
    "pendulum": PendulumParams,
    "cartpole": CartPoleParams,
    "windy_pendulum": WindyPendulumParams,
}


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"system: expected one of {sorted(SYSTEMS)}, received {system!r}")


def system_params(system: str, overrides: dict[str, float] | None = None) -> SystemParams:
    """The system's true parameters with ``overrides`` (e.g. ``{"mass": 1.2}``)."""
    _check_system(system)
    params_class = PARAMS[system]
    names = [f.name for f in dataclasses.fields(params_class)]
    unknown = sorted(set(overrides or {}) - set(names))
    if unknown:
        raise ValueError(
            f"env_params: {unknown} are not parameters of {params_class.__name__}; "
            f"the parameters are {names}"
        )
    return params_class(**(overrides or {}))


def task_cost(system: str) -> GoalWeightedCost:
    """The system's task cost (float64, fixed)."""
    _check_system(system)
    cost = SYSTEMS[system].make_cost(learn_weights=False, learn_goal=False, dtype=torch.float64)
    if not isinstance(cost, GoalWeightedCost):
        raise TypeError(f"{system}: expected a GoalWeightedCost task cost, received {type(cost)}")
    return cost


def expert_for(
    system: str,
    env_params: dict[str, float] | None = None,
    horizon: int = 20,
    restarts: Sequence[float] = (),
    options: dict[str, Any] | None = None,
) -> MPCExpert:
    """The system's MPC expert (true dynamics with ``env_params``, task cost, float64)."""
    _check_system(system)
    spec = SYSTEMS[system]
    dynamics = spec.make_dynamics(system_params(system, env_params), dtype=torch.float64)
    return MPCExpert(
        dynamics,
        task_cost(system),
        spec.control_bound,
        horizon,
        restarts=tuple(restarts),
        **(options or {}),
    )
