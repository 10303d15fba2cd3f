"""From SB3's policy kwargs to an ``MPCPolicy``: where the model comes from, what is learned.

SB3 gives a policy its spaces and its ``policy_kwargs``, nothing else; so the MPC's model is
named there, in one of three ways (``build_mpc``):

    dynamics=, cost=    the modules themselves;
    env_id=             a Gymnasium id whose environment has ``dynamics`` and ``cost``
                        modules (every ``mpc_policy.envs.DynamicsEnv`` has both), made once
                        with ``env_kwargs`` to read them (given modules take precedence);
    mpc_policy=         an ``MPCPolicy`` to start from (model, horizon, bounds, options).

A name in ``learn`` selects the parameters under it ("cost", "dynamics.mass", ...;
"cost.weights" is a ``GoalWeightedCost``'s positive weights, stored as raw weights); the
other parameters are frozen.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost
from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3.checks import action_bounds, check_bounds_match, check_model_fits

__all__ = [
    "MPC_ARGUMENTS",
    "build_mpc",
    "environment_model",
    "learned_values",
    "load_mpc_weights",
    "pop_mpc_kwargs",
]

MPC_ARGUMENTS = (
    "dynamics",
    "cost",
    "env_id",
    "env_kwargs",
    "mpc_policy",
    "horizon",
    "learn",
    "initial_values",
    "obs_to_state",
    "solve_dtype",
    "solver_options",
)
DEFAULT_HORIZON = 10
# what an MPC policy's kwargs errors add: rl-baselines3-zoo's tuning replaces policy_kwargs whole
ZOO_HINT = (
    " (rl-baselines3-zoo's -optimize replaces policy_kwargs with an MLP's: register the MPC's "
    "sampler with --gym-packages mpc_policy.sb3.zoo, see docs/rl.md)"
)


def pop_mpc_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the MPC's arguments (``MPC_ARGUMENTS``) from a policy's kwargs and return
    them; what is left is SB3's."""
    return {name: kwargs.pop(name) for name in MPC_ARGUMENTS if name in kwargs}


def environment_model(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{"dynamics", "cost"}: the modules of the environment ``gym.make(env_id, **env_kwargs)``
    (its unwrapped instance, made and closed here; the modules are the environment's own)."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id: expected a Gymnasium id (str), received {type(env_id).__name__}")
    env = gym.make(env_id, disable_env_checker=True, **dict(env_kwargs or {}))
    try:
        model = {name: getattr(env.unwrapped, name, None) for name in ("dynamics", "cost")}
    finally:
        env.close()
    missing = sorted(name for name, module in model.items() if not isinstance(module, nn.Module))
    if missing:
        raise ValueError(
            f"env_id: expected an environment with `dynamics` and `cost` modules (as every "
            f"mpc_policy.envs.DynamicsEnv has), but {env_id!r} has no module {missing}; "
            "pass dynamics= and cost= in policy_kwargs"
        )
    return model


def build_mpc(
    action_space: spaces.Space,
    *,
    observation_space: spaces.Space | None = None,
    dynamics: nn.Module | None = None,
    cost: nn.Module | None = None,
    env_id: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    mpc_policy: MPCPolicy | None = None,
    horizon: int | None = None,
    learn: Sequence[str] = ("cost",),
    initial_values: Mapping[str, float | Sequence[float] | Tensor] | None = None,
    obs_to_state: Callable[[Tensor], Tensor] | None = None,
    solve_dtype: torch.dtype | None = None,
    solver_options: Mapping[str, Any] | None = None,
) -> MPCPolicy:
    """A fresh ``MPCPolicy`` (deep copies of the modules) bounded by the action box.

    Args:
        action_space: a 1-d Box with finite bounds: the controls' box.
        observation_space: the observations; when given, one observation of it (its
            ``sample()``) is taken through ``obs_to_state``, the dynamics and the cost, so
            that spaces the model does not fit are refused here (``check_model_fits``).
        dynamics, cost: the model's modules (as in ``MPCPolicy``).
        env_id, env_kwargs: an environment whose ``dynamics`` and ``cost`` supply those not
            given (``environment_model``).
        mpc_policy: an ``MPCPolicy`` to start from instead; nothing above nor ``horizon``,
            ``obs_to_state``, ``solve_dtype`` or ``solver_options`` alongside it. Its
            control bounds must be the action box's (``check_bounds_match``).
        horizon: planning horizon T (default 10).
        learn: names of the learned parameters, relative to the ``MPCPolicy``.
        initial_values: {parameter name: value} set first ("cost.weights" positive).
        obs_to_state: observations (B, n_obs) -> MPC states (B, n); identity by default.
        solve_dtype: dtype of the solve (default float64; actions come back in float32).
        solver_options: ``MPCOptions`` fields; defaults ``on_unconverged="zero_grad"`` (no
            gradient from an unconverged element; the report is logged by
            ``MPCHealthCallback`` instead of warned) and ``jacobian="analytic"`` when the
            dynamics have a ``jacobian`` method.
    """
    if mpc_policy is not None:
        fixed = {
            "dynamics": dynamics,
            "cost": cost,
            "env_id": env_id,
            "horizon": horizon,
            "obs_to_state": obs_to_state,
            "solve_dtype": solve_dtype,
            "solver_options": solver_options,
        }
        given = sorted(name for name, value in fixed.items() if value is not None)
        if given:
            raise ValueError(
                f"mpc_policy: expected no {given} alongside it (the MPCPolicy fixes them)"
            )
        if not isinstance(mpc_policy, MPCPolicy):
            raise TypeError(f"mpc_policy: expected an MPCPolicy, received {type(mpc_policy)}")
        check_bounds_match(mpc_policy, action_space)
        mpc = copy.deepcopy(mpc_policy)
    else:
        dynamics, cost = _model(dynamics, cost, env_id, env_kwargs)
        # a training loop: unconverged elements pass no gradient (their report goes to
        # MPCHealthCallback, not to a warning per solve)
        options = {"on_unconverged": "zero_grad"}
        if callable(getattr(dynamics, "jacobian", None)):
            options["jacobian"] = "analytic"
        low, high = (torch.as_tensor(b, dtype=torch.float64) for b in action_bounds(action_space))
        mpc = MPCPolicy(
            copy.deepcopy(dynamics),
            copy.deepcopy(cost),
            DEFAULT_HORIZON if horizon is None else horizon,
            low,
            high,
            obs_to_state=obs_to_state,
            solve_dtype=torch.float64 if solve_dtype is None else solve_dtype,
            **{**options, **dict(solver_options or {})},
        )
    _set_initial_values(mpc, initial_values or {})
    _set_learned(mpc, learn)
    if observation_space is not None:
        check_model_fits(mpc, observation_space, action_space)
    return mpc


def _model(
    dynamics: nn.Module | None,
    cost: nn.Module | None,
    env_id: str | None,
    env_kwargs: Mapping[str, Any] | None,
) -> tuple[nn.Module, nn.Module]:
    """The given modules, those the environment ``env_id`` supplies in their place."""
    if env_id is not None and (dynamics is None or cost is None):
        model = environment_model(env_id, env_kwargs)
        dynamics = model["dynamics"] if dynamics is None else dynamics
        cost = model["cost"] if cost is None else cost
    if dynamics is None or cost is None:
        raise ValueError(
            "dynamics and cost: expected both modules in policy_kwargs, or an env_id "
            "naming an environment that has them (e.g. env_id='mpc_policy/Pendulum-v0'), "
            f"or an mpc_policy; received none{ZOO_HINT}"
        )
    return dynamics, cost


def _parameter_name(name: str, mpc: MPCPolicy) -> str:
    """The parameter behind a user-facing name ("cost.weights" is the raw weights)."""
    if name == "cost.weights" and isinstance(mpc.cost, GoalWeightedCost):
        return "cost.raw_weights"
    return name


def _set_initial_values(mpc: MPCPolicy, values: Mapping[str, Any]) -> None:
    parameters = dict(mpc.named_parameters())
    for name, value in values.items():
        target = parameters.get(_parameter_name(name, mpc))
        if target is None:
            raise ValueError(
                f"initial_values: expected parameter names among {sorted(parameters)} "
                f"(or 'cost.weights'), received {name!r}"
            )
        tensor = torch.as_tensor(value, dtype=target.dtype)
        if tensor.shape != target.shape:
            raise ValueError(
                f"initial_values[{name!r}]: expected shape {tuple(target.shape)}, "
                f"received {tuple(tensor.shape)}"
            )
        if _parameter_name(name, mpc) != name:
            if not bool((tensor > 0).all()):
                raise ValueError(f"initial_values[{name!r}]: expected positive weights")
            tensor = tensor + torch.log(-torch.expm1(-tensor))  # inverse softplus
        with torch.no_grad():
            target.copy_(tensor)


def _set_learned(mpc: MPCPolicy, learn: Sequence[str]) -> None:
    if isinstance(learn, str):
        raise TypeError(f"learn: expected a sequence of names, received the string {learn!r}")
    names = [name for name, _ in mpc.named_parameters()]
    chosen: set[str] = set()
    for entry in learn:
        prefix = _parameter_name(entry, mpc)
        matched = {n for n in names if n == prefix or n.startswith(prefix + ".")}
        if not matched:
            raise ValueError(
                f"learn: expected names among {names} or their prefixes, got {entry!r}"
            )
        chosen |= matched
    for name, parameter in mpc.named_parameters():
        parameter.requires_grad_(name in chosen)


def learned_values(mpc: MPCPolicy) -> dict[str, Tensor]:
    """Current values of the learned parameters, detached (a ``GoalWeightedCost``'s raw
    weights as its positive weights, under "<prefix>.weights")."""
    values = {}
    for prefix, module in mpc.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(module, GoalWeightedCost) and name == "raw_weights":
                full, parameter = full[: -len("raw_weights")] + "weights", module.weights
            values[full] = parameter.detach().clone()
    return values


def load_mpc_weights(policy: BasePolicy, source: MPCPolicy | Mapping[str, Tensor]) -> None:
    """Copy a trained ``MPCPolicy`` (or its ``state_dict``) into every MPC of an SB3
    policy of this package (TD3's target actor included); the structures must match."""
    state = source.state_dict() if isinstance(source, MPCPolicy) else source
    targets = [module for module in policy.modules() if isinstance(module, MPCPolicy)]
    if not targets:
        raise TypeError(f"policy: expected a policy with an MPC actor, received {type(policy)}")
    for mpc in targets:
        mpc.load_state_dict(state)
