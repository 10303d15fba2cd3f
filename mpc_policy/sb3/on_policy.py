"""PPO, A2C (and sb3-contrib's TRPO) with an MPC action mean: a ~ N(u_1(o), diag(exp(log_std))^2).

u_1(o) is the first control of the MPC's plan from observation o (``MPCActor``); log_std is
one learnable, state-independent (m,) vector; the value function is SB3's MLP. SB3 stores
the unclipped Gaussian sample and clips what goes to the environment. Every row of a batch
is solved on its own from a zero warm start, so a row's log-probability does not depend on
the rest of the batch (PPO re-evaluates shuffled minibatches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn

from mpc_policy.sb3.actor import MPCActor, SolverHealth, initial_log_std
from mpc_policy.sb3.building import ZOO_HINT, build_mpc, pop_mpc_kwargs
from mpc_policy.sb3.checks import check_building_algorithm, check_spaces

__all__ = ["MPCActorCriticPolicy"]


class MPCActorCriticPolicy(MPCActor, ActorCriticPolicy):
    """Actor-critic policy for PPO and A2C with an MPC action mean.

    Args:
        observation_space: the observations (a Box; the MPC reads them through
            ``obs_to_state``).
        action_space: a 1-d Box with finite bounds (the MPC's control bounds).
        lr_schedule: SB3's learning-rate schedule.
        log_std_init: initial log standard deviation of every action dimension; None sets
            the standard deviation to a quarter of the action box's half-width.
        net_arch: hidden layers of the value network (a list, or a dict with "vf"; the
            actor has no network: "pi" must be empty); default [64, 64].
        **kwargs: the MPC's arguments (``build_mpc``: ``env_id`` or ``dynamics`` and
            ``cost``, or ``mpc_policy``; ``horizon``, ``learn``, ...) and
            ``ActorCriticPolicy``'s (``activation_fn``, ``ortho_init``, ...); no gSDE.

    Example:
        >>> PPO(MPCActorCriticPolicy, "mpc_policy/Pendulum-v0",
        ...     policy_kwargs={"env_id": "mpc_policy/Pendulum-v0", "horizon": 20})
    """

    mpc_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        log_std_init: float | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        check_spaces(observation_space, action_space)
        algorithm = check_building_algorithm("MPCActorCriticPolicy")
        if kwargs.get("use_sde"):
            raise ValueError("use_sde: expected False (gSDE needs a latent actor network)")
        if isinstance(net_arch, dict) and net_arch.get("pi"):
            raise ValueError(
                f"net_arch: expected no 'pi' layers (the actor is the MPC), got {net_arch}"
                f"{ZOO_HINT}"
            )
        value_layers = net_arch.get("vf", [64, 64]) if isinstance(net_arch, dict) else net_arch
        self.mpc_kwargs = pop_mpc_kwargs(kwargs)
        self.algorithm = algorithm
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch={"pi": [], "vf": [64, 64] if value_layers is None else list(value_layers)},
            log_std_init=log_std_init,  # type: ignore[arg-type]
            **kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        """The value network, the MPC, the log standard deviation and the optimizer."""
        self._build_mlp_extractor()
        self.mpc = build_mpc(
            self.action_space, observation_space=self.observation_space, **self.mpc_kwargs
        )
        if getattr(self, "algorithm", None) == "TRPO":
            # TRPO's Fisher-vector products differentiate the KL to the old policy twice; at
            # the old policy its first derivative in the action mean vanishes, so the terms a
            # first-order implicit gradient misses are multiplied by zero
            self.mpc.options = dataclasses.replace(self.mpc.options, double_backward="first_order")
        self.solver_health = SolverHealth()
        self.log_std = nn.Parameter(initial_log_std(self.log_std_init, self.action_space, False))
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            for module, gain in ((self.mlp_extractor, np.sqrt(2)), (self.value_net, 1.0)):
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The policy's parameters without the MPC's frozen ones (those not in ``learn``):
        what the optimizer holds, and what sb3-contrib's TRPO differentiates (it
        differentiates every parameter yielded here, and a frozen one is an error)."""
        frozen = f"{prefix}.mpc." if prefix else "mpc."
        for name, parameter in super().named_parameters(prefix, recurse, remove_duplicate):
            if parameter.requires_grad or not name.startswith(frozen):
                yield name, parameter

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.mpc_kwargs}

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """The Gaussian N(u_1(obs), diag(exp(log_std))^2) for observations (B, n_obs)."""
        return self.action_dist.proba_distribution(self.first_control(obs), self.log_std)

    def forward(
        self, obs: PyTorchObs, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Actions (B, m), values (B, 1) and log-probabilities (B,)."""
        distribution = self.get_distribution(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self.predict_values(obs), log_prob

    def evaluate_actions(self, obs: PyTorchObs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Values (B, 1), log-probabilities (B,) and entropies (B,) of actions (B, m)."""
        distribution = self.get_distribution(obs)
        entropy = distribution.entropy()
        assert entropy is not None  # a diagonal Gaussian's
        return self.predict_values(obs), distribution.log_prob(actions), entropy
