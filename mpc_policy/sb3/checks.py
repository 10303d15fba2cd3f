"""What an SB3 algorithm and its environment must be for an MPC policy, checked at
construction: the spaces, the algorithm a policy serves (``SERVES``), the environment (no
normalized observations), the MPC's bounds against the action box, and the model against the
spaces. A mismatch is a ``ValueError`` that says what to do, before the first ``predict``.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.wrappers import NormalizeObservation
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import Tensor

from mpc_policy.policy import MPCPolicy
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics, check_declared_sizes

__all__ = [
    "POLICY_FOR",
    "SERVES",
    "action_bounds",
    "check_bounds_match",
    "check_building_algorithm",
    "check_env",
    "check_model_fits",
    "check_spaces",
]

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
