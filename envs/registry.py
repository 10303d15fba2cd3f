"""Systems as values: one frozen record per system, registered once, asked by everything else.

A ``System`` gathers what the environments, the expert and the learners need to know about
one controlled system: its Gymnasium id, its true dynamics and parameter classes, its task
cost and control bound, the model class a learner fits (which may not contain the truth:
the windy pendulum is learned with the simple pendulum's model), which combinations of the
model's parameters the motion identifies (the pendulum's g/l and m l^2), and how far a
state is from the task's goal (the pole's angle from upright). ``register_system`` adds a
record (and its Gymnasium id); ``get_system`` looks one up by name.

    import mpc_policy
    from mpc_policy.envs.registry import get_system
    pendulum = get_system("pendulum")
    dynamics = pendulum.true_dynamics({"mass": 1.2})      # float64, the given overrides

This module needs no solver: the expert that plans with these records lives in
``mpc_policy.agents``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor, nn

from .model import SystemDynamics

__all__ = [
    "SYSTEMS",
    "System",
    "get_system",
    "register_system",
    "scalar_parameters",
    "system_names",
]


def scalar_parameters(dynamics: nn.Module) -> dict[str, Tensor]:
    """Every scalar ``nn.Parameter`` of a model by name (all identifiable: the default)."""
    return {name: p for name, p in dynamics.named_parameters() if p.numel() == 1}


def _no_goal_error(state: np.ndarray) -> float:
    return float(np.linalg.norm(state))


@dataclass(frozen=True)
class System:
    """One controlled system, as every layer sees it.

    Attributes:
        name: the registry key, e.g. "pendulum" (what configs write under ``system``).
        env_id: the Gymnasium id, e.g. "mpc_policy/Pendulum-v0"; ``gymnasium.make(env_id,
            params=...)`` must build a ``DynamicsEnv`` stepping with ``dynamics``.
        dynamics: the true dynamics class, built as ``dynamics(params, dtype=...)``.
        params: the frozen dataclass of its constants; ``params()`` are the true values.
        cost: the task cost factory, ``cost(learn_weights=, learn_goal=, dtype=)``.
        control_bound: the controls lie in [-control_bound, control_bound].
        model: the learner's dynamics class (default: ``dynamics``), built the same way.
        model_params: the parameter class of ``model`` (default: ``params``).
        identifiable: the combinations of a ``model``'s parameters that the motion
            determines, by name (default: every scalar parameter).
        goal_error: distance of an (n,) state to the task's goal, e.g. the pole's angle
            from upright in radians; an episode succeeds when it ends within a threshold.
        entry_point: registered with ``gymnasium.register`` under ``env_id`` (a class or
            "module:Class"); None if the id is registered elsewhere.
        max_episode_steps: the time limit of the registered id.
    """

    name: str
    env_id: str
    dynamics: type[SystemDynamics]
    params: type[Any]
    cost: Callable[..., nn.Module]
    control_bound: float
    model: type[SystemDynamics] | None = None
    model_params: type[Any] | None = None
    identifiable: Callable[[nn.Module], dict[str, Tensor]] = scalar_parameters
    goal_error: Callable[[np.ndarray], float] = field(default=_no_goal_error)
    entry_point: str | Callable[..., gymnasium.Env] | None = None
    max_episode_steps: int = 200

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"name: expected a non-empty string, received {self.name!r}")
        for key in ("dynamics", "model"):
            value = getattr(self, key)
            if value is not None and not (
                isinstance(value, type) and issubclass(value, SystemDynamics)
            ):
                raise TypeError(f"{key}: expected a SystemDynamics subclass, received {value!r}")
        for key in ("params", "model_params"):
            value = getattr(self, key)
            if value is not None and not dataclasses.is_dataclass(value):
                raise TypeError(f"{key}: expected a dataclass type, received {value!r}")
        if not self.control_bound > 0:
            raise ValueError(
                f"control_bound: expected a positive float, received {self.control_bound!r}"
            )

    @property
    def model_class(self) -> type[SystemDynamics]:
        """The learner's dynamics class."""
        return self.model or self.dynamics

    @property
    def model_params_class(self) -> type[Any]:
        """The parameter class of the learner's dynamics."""
        return self.model_params or self.params

    @property
    def n_state(self) -> int:
        return int(self.dynamics.n_state)

    @property
    def n_ctrl(self) -> int:
        return int(self.dynamics.n_ctrl)

    def true_params(self, overrides: Mapping[str, float] | None = None) -> Any:
        """The true parameters with ``overrides`` (e.g. ``{"mass": 1.2}``).

        Raises:
            ValueError: an override names no field of ``params`` (message starts with
                "env_params:"), or a value is out of range.
        """
        names = [f.name for f in dataclasses.fields(self.params)]
        unknown = sorted(set(overrides or {}) - set(names))
        if unknown:
            raise ValueError(
                f"env_params: {unknown} are not parameters of {self.params.__name__}; "
                f"the parameters are {names}"
            )
        return self.params(**dict(overrides or {}))

    def true_dynamics(
        self, overrides: Mapping[str, float] | None = None, dtype: torch.dtype = torch.float64
    ) -> SystemDynamics:
        """The true dynamics module (parameters ``true_params(overrides)``)."""
        return self.dynamics(self.true_params(overrides), dtype=dtype)

    def task_cost(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        """The task cost with its weights and goal fixed."""
        return self.cost(learn_weights=False, learn_goal=False, dtype=dtype)

    def model_of_truth(self, overrides: Mapping[str, float] | None = None) -> SystemDynamics | None:
        """The truth as a ``model`` (float64) if the model class contains it, else None."""
        truth = self.true_params(overrides)
        if type(truth) is not self.model_params_class:
            return None
        return self.model_class(truth, dtype=torch.float64)

    def initial_model(self, overrides: Mapping[str, float] | None = None) -> SystemDynamics:
        """A ``model`` (float64) with the constants it shares with the truth (dt, bounds,
        and the physical ones, which a learner then overwrites)."""
        truth = self.true_params(overrides)
        shared = {
            f.name: getattr(truth, f.name)
            for f in dataclasses.fields(self.model_params_class)
            if hasattr(truth, f.name)
        }
        return self.model_class(self.model_params_class(**shared), dtype=torch.float64)


class _Registry(Mapping[str, System]):
    """The registered systems by name (read-only; add with ``register_system``). The
    built-in ones (``mpc_policy.envs.systems``) are loaded on first use."""

    def __init__(self) -> None:
        self._systems: dict[str, System] = {}
        self._builtins_loaded = False

    def _all(self) -> dict[str, System]:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module("mpc_policy.envs.systems")  # registers them
        return self._systems

    def __getitem__(self, name: str) -> System:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


SYSTEMS = _Registry()


def register_system(system: System, *, replace: bool = False) -> System:
    """Add a system to the registry and register its Gymnasium id (if ``entry_point``).

    Args:
        system: the record.
        replace: allow replacing a system of the same name (else a ``ValueError``).

    Returns:
        The record, for ``PENDULUM = register_system(System(...))``.
    """
    if not isinstance(system, System):
        raise TypeError(f"system: expected a System, received {type(system).__name__}")
    known = SYSTEMS._all()
    if system.name in known and not replace and known[system.name] != system:
        raise ValueError(
            f"system: {system.name!r} is registered already; pass replace=True to replace it"
        )
    known[system.name] = system
    if system.entry_point is not None and (replace or system.env_id not in gymnasium.registry):
        gymnasium.register(
            id=system.env_id,
            entry_point=system.entry_point,
            max_episode_steps=system.max_episode_steps,
        )
    return system


def get_system(name: str | System) -> System:
    """The registered system of that name (a ``System`` is returned as it is).

    Raises:
        ValueError: no system has that name (the message lists the registered ones).
    """
    if isinstance(name, System):
        return name
    if name not in SYSTEMS:
        raise ValueError(f"system: expected one of {sorted(SYSTEMS)}, received {name!r}")
    return SYSTEMS[name]


def system_names() -> list[str]:
    """The names of the registered systems, in registration order."""
    return list(SYSTEMS)
