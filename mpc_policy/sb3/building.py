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
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.wrappers import NormalizeObservation
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost
from mpc_policy.policy import MPCPolicy
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics, check_declared_sizes

__all__ = [
    "MPC_ARGUMENTS",
    "action_bounds",
    "build_mpc",
    "check_bounds_match",
    "check_building_algorithm",
    "check_env",
    "check_model_fits",
    "check_spaces",
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
# how far up the call stack a policy's constructor looks for the algorithm building it
ALGORITHM_FRAMES = 8
NORMALIZED_OBSERVATIONS = (
    "the MPC would plan from normalized observations as if they were states; normalize "
    "rewards only (VecNormalize(venv, norm_obs=False, norm_reward=True) is fine), or leave "
    "the observations as the environment gives them"
)


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Refuse spaces an MPC actor cannot serve: a non-Box observation space, or an action
    space other than a 1-d Box with finite bounds."""
    if not isinstance(observation_space, spaces.Box):
        raise TypeError(f"observation_space: expected a Box, received {observation_space}")
    action_bounds(action_space)


def check_env(env: object) -> None:
    """Refuse an environment whose observations reach the policy normalized.

    ``VecNormalize(norm_obs=True)`` (anywhere in a chain of ``VecEnvWrapper``s) and
    Gymnasium's ``NormalizeObservation`` inside the environments hand the policy
    (obs - mean) / std, which ``obs_to_state`` would take for the state; the statistics move
    while training, so no fixed map back exists. Reward normalization is fine.

    Args:
        env: a ``VecEnv`` (or None, or anything else: nothing to check).
    """
    wrapper = env
    while isinstance(wrapper, VecEnv):
        if isinstance(wrapper, VecNormalize) and wrapper.norm_obs:
            raise ValueError(
                f"env: VecNormalize(norm_obs=True) is refused: {NORMALIZED_OBSERVATIONS}"
            )
        wrapper = getattr(wrapper, "venv", None)
    if isinstance(env, VecEnv) and any(env.env_is_wrapped(NormalizeObservation)):
        raise ValueError(
            f"env: gymnasium.wrappers.NormalizeObservation is refused: {NORMALIZED_OBSERVATIONS}"
        )


# the algorithms each MPC policy serves, and the policy to use with each known algorithm
# (by class name, so that sb3-contrib need not be imported); None: no MPC policy can serve it
SERVES = {
    "MPCActorCriticPolicy": ("PPO", "A2C", "TRPO"),
    "MPCSACPolicy": ("SAC",),
    "MPCTD3Policy": ("TD3",),
    "MPCTQCPolicy": ("TQC",),
    "MPCCrossQPolicy": ("CrossQ",),
}
POLICY_FOR = {
    "PPO": "mpc_policy.sb3.MPCActorCriticPolicy",
    "A2C": "mpc_policy.sb3.MPCActorCriticPolicy",
    "TRPO": "mpc_policy.sb3.MPCActorCriticPolicy",
    "SAC": "mpc_policy.sb3.MPCSACPolicy",
    "TD3": "mpc_policy.sb3.MPCTD3Policy",
    "TQC": "mpc_policy.sb3.contrib.MPCTQCPolicy",
    "CrossQ": "mpc_policy.sb3.contrib.MPCCrossQPolicy",
    "RecurrentPPO": None,
}


def check_building_algorithm(policy: str) -> str | None:
    """Checks of the SB3 algorithm that is building the calling policy, if any
    (``PPO(...)``, ``SAC(...)``, ``Algo.load(..., env=...)``): the policy serves that
    algorithm (``SERVES``; an algorithm unknown here is let through), and its environment
    passes ``check_env``.

    SB3 hands a policy only its spaces; the algorithm constructs it in its own
    ``_setup_model``, so it is the ``self`` of a frame a few levels up the call stack.
    A policy built by hand has none, and ``MPCHealthCallback`` checks the environment
    again when ``learn`` starts (after a ``set_env``).

    Args:
        policy: the calling policy's class name (a key of ``SERVES``).

    Returns:
        The name of the algorithm building it (its first class known to ``POLICY_FOR``,
        e.g. "TRPO"), or None when none is found.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(ALGORITHM_FRAMES):
            frame = None if frame is None else frame.f_back
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, BaseAlgorithm):
                _check_served(policy, owner)
                check_env(owner.env)
                known = [c.__name__ for c in type(owner).__mro__ if c.__name__ in POLICY_FOR]
                return known[0] if known else None
    finally:
        del frame
    return None


def _check_served(policy: str, algorithm: BaseAlgorithm) -> None:
    known = [cls.__name__ for cls in type(algorithm).__mro__ if cls.__name__ in POLICY_FOR]
    if not known or known[0] in SERVES[policy]:
        return
    name, replacement = known[0], POLICY_FOR[known[0]]
    if replacement is None:
        raise ValueError(
            f"policy: {name} cannot take an MPC actor: its policy carries an LSTM state "
            "(lstm_actor) between steps, and the MPC plans from each observation alone "
            "(its plan is its memory); use PPO with mpc_policy.sb3.MPCActorCriticPolicy"
        )
    raise ValueError(
        f"policy: {policy} serves {' and '.join(SERVES[policy])}, not {name}; "
        f"use {name}({replacement.rsplit('.', 1)[1]}, ...) from {replacement.rsplit('.', 1)[0]}"
    )


def action_bounds(action_space: spaces.Space) -> tuple[np.ndarray, np.ndarray]:
    """(m,) low and high of a 1-d Box with finite bounds (the MPC's control bounds)."""
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise TypeError(f"action_space: expected a 1-d Box, received {action_space}")
    if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
        raise ValueError(f"action_space: expected finite bounds, received {action_space}")
    return action_space.low, action_space.high


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


def check_bounds_match(mpc: MPCPolicy, action_space: spaces.Space) -> None:
    """Refuse an ``MPCPolicy`` whose control bounds are not the action box.

    SB3 clips (PPO, A2C) or scales (SAC, TD3) actions with the action box, so an MPC that
    plans with other bounds would have its plan applied with another torque than it
    planned (bounds [-2, 2] on a [-1, 1] box: twice the torque). The bounds must be given
    (not None) and equal the box's low and high, as a float or a (m,) tensor (or any
    shape whose every row is that (m,) vector).
    """
    low, high = action_bounds(action_space)
    for name, bound, box in zip(("u_lower", "u_upper"), mpc.control_bounds(), (low, high)):
        expected = np.asarray(box, dtype=np.float64)
        if bound is None:
            raise ValueError(
                f"mpc_policy: its {name} is None (unbounded), but the action space bounds the "
                f"controls by {expected.tolist()}; build the MPCPolicy with "
                f"{name}={expected.tolist()} (the action box) so that it plans what SB3 applies"
            )
        given = torch.as_tensor(bound, dtype=torch.float64).detach().cpu().numpy()
        try:
            rows = np.broadcast_to(given, (*given.shape[:-1], *expected.shape))
        except ValueError:
            rows = None
        if rows is None or not np.allclose(rows, expected, rtol=1e-6, atol=1e-6):
            shown = given.tolist() if given.size <= 8 else f"a tensor of shape {given.shape}"
            raise ValueError(
                f"mpc_policy: its {name} {shown} is not the action space's "
                f"{'low' if name == 'u_lower' else 'high'} {expected.tolist()}: SB3 would apply "
                "controls the MPC did not plan. Build the MPCPolicy with the action box as its "
                "bounds, or wrap the environment so that its action space is the MPC's "
                "(e.g. gymnasium.wrappers.RescaleAction)"
            )


def check_model_fits(
    mpc: MPCPolicy, observation_space: spaces.Space, action_space: spaces.Space
) -> None:
    """Refuse spaces the MPC's model does not fit, before the first ``predict``.

    One observation (``observation_space.sample()``) goes through ``obs_to_state``, and
    the state it gives, with a zero control of the action space's size, through the
    dynamics and the cost, checked as the solver checks them (``mpc_policy.problem.contract``).
    """
    check_spaces(observation_space, action_space)
    m = int(action_space.shape[0])  # type: ignore[index]  # a 1-d Box (check_spaces)
    if mpc.n_ctrl is not None and mpc.n_ctrl != m:
        raise ValueError(
            f"action_space: expected {mpc.n_ctrl} controls (the MPC's n_ctrl), received "
            f"{action_space} with {m}"
        )
    parameter = next(mpc.parameters(), None)
    dtype = mpc.solve_dtype or (torch.float32 if parameter is None else parameter.dtype)
    device = None if parameter is None else parameter.device
    sample = np.asarray(observation_space.sample(), dtype=np.float32).reshape(1, -1)
    obs = torch.as_tensor(sample, dtype=torch.float32, device=device)
    with torch.no_grad():
        try:
            x = mpc.obs_to_state(obs)
        except Exception as error:
            raise ValueError(
                f"observation_space: obs_to_state does not accept observations of "
                f"{observation_space} ({type(error).__name__}: {error})"
            ) from error
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] != 1:
            raise ValueError(
                f"observation_space: expected obs_to_state to map (B, n_obs) observations of "
                f"{observation_space} to (B, n) states, received "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        n = int(x.shape[1])
        x = x.to(dtype)
        u = torch.zeros(1, m, dtype=dtype, device=x.device)
        try:
            check_declared_sizes(mpc.dynamics, n, m)
            CheckedDynamics(mpc.dynamics, n, m)(x, u)
            CheckedCost(mpc.cost)(x.unsqueeze(1), u.unsqueeze(1))
        except (ValueError, TypeError, RuntimeError, IndexError) as error:
            raise ValueError(
                f"observation_space, action_space: the MPC's model does not fit them: states "
                f"of size {n} from observations of {observation_space} and {m} controls from "
                f"{action_space} ({error}); pass obs_to_state= mapping observations to the "
                "model's states, or a model for these spaces"
            ) from error


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
