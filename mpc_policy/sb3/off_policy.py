"""SAC and TD3 with an MPC actor; the critics are SB3's.

Both act in the action box scaled onto [-1, 1] (``MPCActor.scaled_control``):

    SAC  (MPCSACPolicy):  a = tanh(z),  z ~ N(atanh(clamp(scale(u_1(o)), -1+eps, 1-eps)),
                          diag(exp(log_std))^2), log_std learnable and state-independent
    TD3  (MPCTD3Policy):  a = scale(u_1(o)), the target actor Polyak-averaged (the MPC's
                          parameters are averaged with the rest)

SB3 maps a back onto the action box. Each policy builds its actors with ``make_actor`` from
the MPC's arguments (``build_mpc``); the actor part of ``net_arch`` is unused.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor, nn

from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3.actor import MPCActor, SolverHealth, initial_log_std
from mpc_policy.sb3.building import build_mpc, pop_mpc_kwargs
from mpc_policy.sb3.checks import action_bounds, check_building_algorithm, check_spaces

__all__ = [
    "MPCDeterministicActor",
    "MPCSACPolicy",
    "MPCSquashedActor",
    "MPCTD3Policy",
    "SquashedMPCPolicy",
    "off_policy_mpc_kwargs",
]

# a tanh-squashed mean must stay finite: atanh(clamp(scale(u), -1 + eps, 1 - eps))
ATANH_EPS = 1e-6


class _ScaledActor(MPCActor, BasePolicy):
    """The actors' common part: an MPC in an SB3 module whose actions lie in [-1, 1]."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        mpc: MPCPolicy,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, normalize_images=normalize_images, squash_output=True
        )
        self.mpc = mpc
        self.solver_health = SolverHealth()


class MPCSquashedActor(_ScaledActor):
    """SAC's actor: a = tanh(z), z ~ N(atanh(scale(u_1(o))), diag(exp(log_std))^2).

    The deterministic action tanh(mean) is the MPC's control scaled to [-1, 1] (within
    ``ATANH_EPS`` of the bounds).

    Args:
        observation_space, action_space: as the policy's (a 1-d Box with finite bounds).
        mpc: the MPC whose first control is the action.
        log_std_init: initial pre-tanh log standard deviation; None: log 0.25.
        normalize_images: SB3's preprocessing flag.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        mpc: MPCPolicy,
        log_std_init: float | None = None,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(observation_space, action_space, mpc, normalize_images)
        self.log_std = nn.Parameter(initial_log_std(log_std_init, action_space, True))
        self.action_dist = SquashedDiagGaussianDistribution(action_bounds(action_space)[0].size)

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Pre-tanh means (B, m), log standard deviations (B, m), no extra kwargs."""
        scaled = self.scaled_control(obs)
        mean = torch.atanh(scaled.clamp(-1.0 + ATANH_EPS, 1.0 - ATANH_EPS))
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return mean, log_std, {}

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> Tensor:
        """Squashed actions (B, m) in [-1, 1]."""
        mean, log_std, kwargs = self.get_action_dist_params(obs)
        return self.action_dist.actions_from_params(mean, log_std, deterministic, **kwargs)

    def action_log_prob(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        """Sampled squashed actions (B, m) and their log-probabilities (B,)."""
        mean, log_std, kwargs = self.get_action_dist_params(obs)
        return self.action_dist.log_prob_from_params(mean, log_std, **kwargs)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self(observation, deterministic)


class MPCDeterministicActor(_ScaledActor):
    """TD3's actor: the MPC's control scaled to [-1, 1]. Args as ``MPCSquashedActor``'s,
    without ``log_std_init``."""

    def forward(self, obs: PyTorchObs) -> Tensor:
        """Actions (B, m) in [-1, 1]."""
        return self.scaled_control(obs)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self(observation)


def off_policy_mpc_kwargs(
    policy: str,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Check what an MPC actor cannot take, then pop the MPC's arguments from kwargs
    (``policy``: the calling policy's class name, for ``check_building_algorithm``)."""
    check_spaces(observation_space, action_space)
    check_building_algorithm(policy)
    if kwargs.get("use_sde"):
        raise ValueError("use_sde: expected False (gSDE needs a latent actor network)")
    if kwargs.get("share_features_extractor"):
        raise ValueError("share_features_extractor: expected False (the MPC reads observations)")
    return pop_mpc_kwargs(kwargs)


class SquashedMPCPolicy:
    """What every policy with an ``MPCSquashedActor`` adds to its SB3 class (SAC, and
    sb3-contrib's TQC and CrossQ): the MPC's arguments popped from the kwargs and checked,
    the actor built on the MPC, and the arguments saved with the model. Put it first among
    the bases, before the SB3 policy class; ``serves`` is the name ``SERVES`` knows it by and
    ``actor_class`` the actor it builds."""

    serves: str
    actor_class: type[MPCSquashedActor] = MPCSquashedActor
    mpc_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        log_std_init: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.mpc_kwargs = off_policy_mpc_kwargs(
            self.serves, observation_space, action_space, kwargs
        )
        super().__init__(  # type: ignore[call-arg]
            observation_space,
            action_space,
            lr_schedule,
            log_std_init=log_std_init,
            **kwargs,
        )

    def make_actor(self, features_extractor: Any = None) -> Any:
        """The ``actor_class`` on the MPC (SB3's ``make_actor`` types an MLP actor)."""
        policy = cast(Any, self)
        actor = self.actor_class(
            policy.observation_space,
            policy.action_space,
            build_mpc(
                policy.action_space, observation_space=policy.observation_space, **self.mpc_kwargs
            ),
            cast(float | None, policy.actor_kwargs["log_std_init"]),
            policy.normalize_images,
        )
        return actor.to(policy.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.mpc_kwargs}  # type: ignore[misc]


class MPCSACPolicy(SquashedMPCPolicy, SACPolicy):
    """SAC policy with an ``MPCSquashedActor``. Args as ``SACPolicy``'s plus the MPC's
    (``build_mpc``); ``log_std_init`` is the pre-tanh log standard deviation (None: log
    0.25)."""

    serves = "MPCSACPolicy"


class MPCTD3Policy(TD3Policy):
    """TD3 policy with ``MPCDeterministicActor``s (the actor and its target). Args as
    ``TD3Policy``'s plus the MPC's (``build_mpc``)."""

    mpc_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        self.mpc_kwargs = off_policy_mpc_kwargs(
            "MPCTD3Policy", observation_space, action_space, kwargs
        )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> MPCDeterministicActor:  # type: ignore[override]
        actor = MPCDeterministicActor(
            self.observation_space,
            self.action_space,
            build_mpc(
                self.action_space, observation_space=self.observation_space, **self.mpc_kwargs
            ),
            self.normalize_images,
        )
        return actor.to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.mpc_kwargs}
