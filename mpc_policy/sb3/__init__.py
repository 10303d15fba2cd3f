"""Stable-Baselines3 policies whose actor is a differentiable MPC (the only SB3 package).

The actor's action for an observation o is the first control u_1(o) of an ``MPCPolicy``;
gradients of the RL losses reach the MPC's cost and dynamics parameters through the solver:

    PPO, A2C  (MPCActorCriticPolicy):  a ~ N(u_1(o), diag(exp(log_std))^2), clipped by SB3
    SAC       (MPCSACPolicy):          a = tanh(z),  z ~ N(atanh(scale(u_1(o))), diag(std)^2)
    TD3       (MPCTD3Policy):          a = scale(u_1(o))

where scale maps the action box [low, high] onto [-1, 1]. The MPC is described by
``policy_kwargs`` (``building.build_mpc``): its model as ``env_id`` (a Gymnasium id of an
environment with ``dynamics`` and ``cost`` modules, such as this project's), as
``dynamics`` and ``cost``, or as an ``mpc_policy`` to start from; then ``horizon``,
``learn``, ``initial_values``, ``obs_to_state``, ``solve_dtype``, ``solver_options``.
``model.save`` records them, so ``Algo.load(path)`` rebuilds the policy without an
environment instance.

    from stable_baselines3 import PPO
    from mpc_policy.sb3 import MPCActorCriticPolicy
    model = PPO(MPCActorCriticPolicy, "mpc_policy/Pendulum-v0",
                policy_kwargs={"env_id": "mpc_policy/Pendulum-v0", "learn": ["cost"]})

Modules: ``building`` (policy kwargs -> ``MPCPolicy``), ``actor`` (the solve an actor makes
and its per-phase report), ``on_policy`` (PPO, A2C), ``off_policy`` (SAC, TD3),
``callbacks`` (health logging, a progress bar); imported only when named: ``contrib``
(sb3-contrib's TQC, CrossQ) and ``zoo`` (rl-baselines3-zoo's tuning of the MPC's knobs).
"""

from mpc_policy.sb3.actor import MPCActor, SolverHealth
from mpc_policy.sb3.building import build_mpc, environment_model, learned_values, load_mpc_weights
from mpc_policy.sb3.callbacks import EvaluationCurve, MPCHealthCallback, TqdmCallback
from mpc_policy.sb3.off_policy import (
    MPCDeterministicActor,
    MPCSACPolicy,
    MPCSquashedActor,
    MPCTD3Policy,
)
from mpc_policy.sb3.on_policy import MPCActorCriticPolicy

__all__ = [
    "EvaluationCurve",
    "MPCActor",
    "MPCActorCriticPolicy",
    "MPCDeterministicActor",
    "MPCHealthCallback",
    "MPCSACPolicy",
    "MPCSquashedActor",
    "MPCTD3Policy",
    "SolverHealth",
    "TqdmCallback",
    "build_mpc",
    "environment_model",
    "learned_values",
    "load_mpc_weights",
]
