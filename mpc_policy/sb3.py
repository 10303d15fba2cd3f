"""Stable-Baselines3 policies whose actor is a differentiable MPC (the only SB3 module).

The actor's action for an observation o is the first control u_1(o) of an ``MPCPolicy``;
gradients of the RL losses reach the MPC's cost and dynamics parameters through the solver:

    PPO, A2C  (MPCActorCriticPolicy):  a ~ N(u_1(o), diag(exp(log_std))^2), clipped by SB3
    SAC       (MPCSACPolicy):          a = tanh(z),  z ~ N(atanh(scale(u_1(o))), diag(std)^2)
    TD3       (MPCTD3Policy):          a = scale(u_1(o))

where scale maps the action box [low, high] onto [-1, 1] (SAC and TD3 act in that space);
log_std is one learnable, state-independent vector. The critics are SB3's own networks.

The MPC is described by these ``policy_kwargs`` (all optional):

    dynamics, cost: modules as in ``MPCPolicy``. Without them (and without ``mpc_policy``),
        the environment's own ``dynamics`` and ``cost`` modules are the starting model: those
        of the first sub-environment's unwrapped instance (``envs.DynamicsEnv`` has both).
    mpc_policy: an ``MPCPolicy`` to start from instead (e.g. one trained by behaviour
        cloning); it fixes the model, horizon, bounds and solver options.
    horizon: planning horizon T (default 10).
    learn: which parameters are learned: names relative to the ``MPCPolicy`` ("cost",
        "dynamics", "cost.goal", "dynamics.mass", ...; a name also selects the parameters
        under it; "cost.weights" is the ``GoalWeightedCost``'s raw weights). Default
        ("cost",). The others are frozen, whatever their ``requires_grad`` was.
    initial_values: {parameter name: value} set before training; "cost.weights" takes the
        positive weights of a ``GoalWeightedCost``.
    obs_to_state: observation (B, n_obs) -> MPC state (B, n); identity by default.
    solve_dtype: dtype of the solve (default float64; actions come back in float32).
    solver_options: ``MPCOptions`` fields; defaults ``on_unconverged="ignore"`` (the
        per-solve report is counted in ``solver_health`` and logged by
        ``MPCHealthCallback``) and ``jacobian="analytic"`` when the dynamics have a
        ``jacobian`` method.

Every row of a batch is solved on its own from a zero warm start, so a row's action and
log-probability do not depend on the rest of the batch (PPO re-evaluates shuffled
minibatches). ``model.save`` records these kwargs (the discovered environment model
included), so ``Algo.load(path)`` rebuilds the policy without the environment.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution, SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor, nn

from mpc_policy.costs import GoalWeightedCost
from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import SolverInfo

__all__ = [
    "MPCActorCriticPolicy",
    "MPCDeterministicActor",
    "MPCHealthCallback",
    "MPCSACPolicy",
    "MPCSquashedActor",
    "MPCTD3Policy",
    "SolverHealth",
    "build_mpc",
    "learned_values",
    "load_mpc_weights",
]

MPC_ARGUMENTS = (
    "dynamics",
    "cost",
    "mpc_policy",
    "horizon",
    "learn",
    "initial_values",
    "obs_to_state",
    "solve_dtype",
    "solver_options",
)
DEFAULT_HORIZON = 10
# a tanh-squashed mean must stay finite: atanh(clamp(scale(u), -1 + eps, 1 - eps))
ATANH_EPS = 1e-6
# default exploration: a standard deviation of a quarter of the action box's half-width
STD_FRACTION = 0.25


def _action_box(action_space: spaces.Space) -> spaces.Box:
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise TypeError(f"action_space: expected a 1-d Box, received {action_space}")
    return action_space


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    if not isinstance(observation_space, spaces.Box):
        raise TypeError(f"observation_space: expected a Box, received {observation_space}")
    _action_box(action_space)


def build_mpc(
    action_space: spaces.Space,
    *,
    dynamics: nn.Module | None = None,
    cost: nn.Module | None = None,
    mpc_policy: MPCPolicy | None = None,
    horizon: int | None = None,
    learn: Sequence[str] = ("cost",),
    initial_values: Mapping[str, float | Sequence[float] | Tensor] | None = None,
    obs_to_state: Callable[[Tensor], Tensor] | None = None,
    solve_dtype: torch.dtype | None = None,
    solver_options: Mapping[str, Any] | None = None,
) -> MPCPolicy:
    """A fresh ``MPCPolicy`` (deep copies of the given modules) from the policy kwargs
    described in the module docstring; the controls are bounded by the action box."""
    if mpc_policy is not None:
        fixed = {
            "dynamics": dynamics,
            "cost": cost,
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
        mpc = copy.deepcopy(mpc_policy)
    else:
        if dynamics is None or cost is None:
            raise ValueError("dynamics and cost: expected both modules, or an mpc_policy")
        options = {"on_unconverged": "ignore"}
        if callable(getattr(dynamics, "jacobian", None)):
            options["jacobian"] = "analytic"
        low, high = (torch.as_tensor(b, dtype=torch.float64) for b in _bounds(action_space))
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
    return mpc


def _bounds(action_space: spaces.Space) -> tuple[np.ndarray, np.ndarray]:
    box = _action_box(action_space)
    if not (np.isfinite(box.low).all() and np.isfinite(box.high).all()):
        raise ValueError(f"action_space: expected finite bounds, received {box}")
    return box.low, box.high


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
    policy of this module (TD3's target actor included); the structures must match."""
    state = source.state_dict() if isinstance(source, MPCPolicy) else source
    targets = [module for module in policy.modules() if isinstance(module, MPCPolicy)]
    if not targets:
        raise TypeError(f"policy: expected a policy with an MPC actor, received {type(policy)}")
    for mpc in targets:
        mpc.load_state_dict(state)


class SolverHealth:
    """Running totals of a policy's MPC solves, per phase: "update" for solves with
    gradients (the policy's own training step), "rollout" for the others (acting,
    evaluation, target actions)."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}

    def record(self, info: SolverInfo) -> None:
        phase = "update" if torch.is_grad_enabled() else "rollout"
        totals = self.totals.setdefault(
            phase, {"solves": 0.0, "iterations": 0.0, "max_iterations": 0.0, "unconverged": 0.0}
        )
        totals["solves"] += info.iterations.numel()
        totals["iterations"] += float(info.iterations.sum())
        totals["max_iterations"] = max(totals["max_iterations"], float(info.iterations.max()))
        totals["unconverged"] += float((~info.converged).sum())

    def summary(self) -> dict[str, float]:
        """{"<phase>_iterations" (mean per solved row), "<phase>_max_iterations",
        "<phase>_unconverged_fraction", "<phase>_solves"} for the phases seen."""
        out = {}
        for phase, totals in self.totals.items():
            solves = max(totals["solves"], 1.0)
            out[f"{phase}_iterations"] = totals["iterations"] / solves
            out[f"{phase}_max_iterations"] = totals["max_iterations"]
            out[f"{phase}_unconverged_fraction"] = totals["unconverged"] / solves
            out[f"{phase}_solves"] = totals["solves"]
        return out

    def reset(self) -> None:
        self.totals.clear()

    def absorb(self, other: SolverHealth) -> None:
        """Add another report's totals to this one and reset the other."""
        for phase, totals in other.totals.items():
            into = self.totals.setdefault(phase, dict.fromkeys(totals, 0.0))
            for key, value in totals.items():
                into[key] = max(into[key], value) if key == "max_iterations" else into[key] + value
        other.reset()


class _MPCActor:
    """What the actors here share: an ``MPCPolicy`` whose first control is the action
    (mean), and the running report of its solves."""

    mpc: MPCPolicy
    solver_health: SolverHealth
    observation_space: spaces.Space
    action_space: spaces.Space
    normalize_images: bool

    def first_control(self, obs: PyTorchObs) -> Tensor:
        """u_1 (B, m) in the observation dtype for SB3 observations (B, n_obs)."""
        observation = preprocess_obs(obs, self.observation_space, self.normalize_images)
        assert isinstance(observation, Tensor)
        u = self.mpc(observation)
        assert self.mpc.last_info is not None
        self.solver_health.record(self.mpc.last_info)
        return u

    def scaled_control(self, obs: PyTorchObs) -> Tensor:
        """u_1 (B, m) mapped from the action box onto [-1, 1]^m (clamped)."""
        u = self.first_control(obs)
        low, high = (
            torch.as_tensor(b, dtype=u.dtype, device=u.device) for b in _bounds(self.action_space)
        )
        return (2.0 * (u - low) / (high - low) - 1.0).clamp(-1.0, 1.0)


def _algorithm_under_construction() -> BaseAlgorithm | None:
    """The SB3 algorithm whose ``_setup_model`` is building the calling policy, if any.

    SB3 gives a policy only the spaces; the environment is reachable through the algorithm
    that constructs it (its ``env`` is set before ``_setup_model`` builds the policy). A
    policy built anywhere else (e.g. by hand inside a callback) finds none.
    """
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if frame.f_code.co_name == "_setup_model" and isinstance(candidate, BaseAlgorithm):
            return candidate
        frame = frame.f_back
    return None


def _mpc_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the MPC's policy kwargs; without a model, take the environment's."""
    mpc_kwargs = {name: kwargs.pop(name) for name in MPC_ARGUMENTS if name in kwargs}
    if any(mpc_kwargs.get(name) is not None for name in ("dynamics", "cost", "mpc_policy")):
        return mpc_kwargs
    algorithm = _algorithm_under_construction()
    venv = None if algorithm is None else algorithm.get_env()
    if algorithm is None or venv is None:
        raise ValueError(
            "dynamics and cost: expected modules (or mpc_policy) in policy_kwargs, or an "
            "algorithm built on an environment that has them; received neither"
        )
    try:
        model = {name: venv.get_attr(name, indices=[0])[0] for name in ("dynamics", "cost")}
    except AttributeError as error:
        raise ValueError(
            "dynamics and cost: the environment has no `dynamics` and `cost` modules "
            f"(as envs.DynamicsEnv has); pass them in policy_kwargs ({error})"
        ) from error
    # recorded in the algorithm's kwargs (a new dict: the user's is left alone), so that
    # model.save keeps the starting model and Algo.load rebuilds it without the environment
    algorithm.policy_kwargs = {**algorithm.policy_kwargs, **model}
    return {**mpc_kwargs, **model}


def _log_std(log_std_init: float | None, action_space: spaces.Space, squashed: bool) -> Tensor:
    """(m,) initial log standard deviations (default: a quarter of the half-width)."""
    low, high = _bounds(action_space)
    if log_std_init is not None:
        return torch.full(low.shape, float(log_std_init))
    half_width = np.ones_like(low) if squashed else (high - low) / 2.0
    return torch.as_tensor(np.log(STD_FRACTION * half_width), dtype=torch.float32)


class MPCActorCriticPolicy(_MPCActor, ActorCriticPolicy):
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
        **kwargs: the MPC's policy kwargs (module docstring) and ``ActorCriticPolicy``'s
            (``activation_fn``, ``ortho_init``, ``optimizer_class``, ...); no gSDE.
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
        _check_spaces(observation_space, action_space)
        if kwargs.get("use_sde"):
            raise ValueError("use_sde: expected False (gSDE needs a latent actor network)")
        if isinstance(net_arch, dict) and net_arch.get("pi"):
            raise ValueError(
                f"net_arch: expected no 'pi' layers (the actor is the MPC), got {net_arch}"
            )
        value_layers = net_arch.get("vf", [64, 64]) if isinstance(net_arch, dict) else net_arch
        self.mpc_kwargs = _mpc_kwargs(kwargs)
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
        self.mpc = build_mpc(self.action_space, **self.mpc_kwargs)
        self.solver_health = SolverHealth()
        self.log_std = nn.Parameter(_log_std(self.log_std_init, self.action_space, False))
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            for module, gain in ((self.mlp_extractor, np.sqrt(2)), (self.value_net, 1.0)):
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

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
        assert entropy is not None
        return self.predict_values(obs), distribution.log_prob(actions), entropy


class MPCSquashedActor(_MPCActor, BasePolicy):
    """SAC's actor: a = tanh(z), z ~ N(atanh(scale(u_1(o))), diag(exp(log_std))^2).

    The deterministic action tanh(mean) is the MPC's control scaled to [-1, 1] (within
    ``ATANH_EPS`` of the bounds), which SB3 maps back to the action box.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        mpc: MPCPolicy,
        log_std_init: float | None = None,
        normalize_images: bool = True,
    ) -> None:
        super().__init__(
            observation_space, action_space, normalize_images=normalize_images, squash_output=True
        )
        self.mpc = mpc
        self.solver_health = SolverHealth()
        self.log_std = nn.Parameter(_log_std(log_std_init, action_space, True))
        self.action_dist = SquashedDiagGaussianDistribution(_action_box(action_space).shape[0])

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Pre-tanh means (B, m), log standard deviations (B, m), no extra kwargs."""
        scaled = self.scaled_control(obs)
        mean = torch.atanh(scaled.clamp(-1.0 + ATANH_EPS, 1.0 - ATANH_EPS))
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return mean, log_std, {}

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> Tensor:
        mean, log_std, kwargs = self.get_action_dist_params(obs)
        return self.action_dist.actions_from_params(mean, log_std, deterministic, **kwargs)

    def action_log_prob(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        mean, log_std, kwargs = self.get_action_dist_params(obs)
        return self.action_dist.log_prob_from_params(mean, log_std, **kwargs)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self(observation, deterministic)


class MPCDeterministicActor(_MPCActor, BasePolicy):
    """TD3's actor: the MPC's control scaled to [-1, 1]."""

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

    def forward(self, obs: PyTorchObs) -> Tensor:
        return self.scaled_control(obs)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        return self(observation)


def _off_policy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("use_sde"):
        raise ValueError("use_sde: expected False (gSDE needs a latent actor network)")
    if kwargs.get("share_features_extractor"):
        raise ValueError("share_features_extractor: expected False (the MPC reads observations)")
    return _mpc_kwargs(kwargs)


class MPCSACPolicy(SACPolicy):
    """SAC policy with an ``MPCSquashedActor``; the critics are SB3's. Args as
    ``SACPolicy`` plus the MPC's policy kwargs; ``log_std_init`` is the pre-tanh log
    standard deviation (None: log 0.25); the actor part of ``net_arch`` is unused."""

    mpc_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        log_std_init: float | None = None,
        **kwargs: Any,
    ) -> None:
        _check_spaces(observation_space, action_space)
        self.mpc_kwargs = _off_policy_kwargs(kwargs)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            log_std_init=log_std_init,  # type: ignore[arg-type]
            **kwargs,
        )

    def make_actor(self, features_extractor: Any = None) -> MPCSquashedActor:  # type: ignore[override]
        mpc = build_mpc(self.action_space, **self.mpc_kwargs)
        actor = MPCSquashedActor(
            self.observation_space,
            self.action_space,
            mpc,
            cast(float | None, self.actor_kwargs["log_std_init"]),
            self.normalize_images,
        )
        return actor.to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.mpc_kwargs}


class MPCTD3Policy(TD3Policy):
    """TD3 policy with ``MPCDeterministicActor``s (actor and Polyak-averaged target: the
    MPC's parameters are averaged); the critics are SB3's. Args as ``TD3Policy`` plus the
    MPC's policy kwargs; the actor part of ``net_arch`` is unused."""

    mpc_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        _check_spaces(observation_space, action_space)
        self.mpc_kwargs = _off_policy_kwargs(kwargs)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> MPCDeterministicActor:  # type: ignore[override]
        mpc = build_mpc(self.action_space, **self.mpc_kwargs)
        actor = MPCDeterministicActor(
            self.observation_space, self.action_space, mpc, self.normalize_images
        )
        return actor.to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.mpc_kwargs}


class MPCHealthCallback(BaseCallback):
    """Logs the MPC's health and learned parameters at the end of every rollout.

    Records (floats, through SB3's logger, so to tensorboard with ``tensorboard_log``):
    ``mpc/<phase>_iterations`` (mean outer iterations per solved row),
    ``mpc/<phase>_max_iterations``, ``mpc/<phase>_unconverged_fraction`` and
    ``mpc/<phase>_solves`` over the solves since the last rollout end, for the phases
    "rollout" (no gradients) and "update" (the previous policy update); and, with
    ``log_parameters``, ``mpc_param/<name>`` (``_<i>`` per entry of a vector) for each
    learned MPC parameter.
    """

    def __init__(self, log_parameters: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_parameters = log_parameters

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        merged = SolverHealth()
        for module in self.model.policy.modules():
            if isinstance(module, _MPCActor):
                merged.absorb(module.solver_health)
        for key, number in merged.summary().items():
            self.logger.record(f"mpc/{key}", float(number))
        mpcs = [m for m in self.model.policy.modules() if isinstance(m, MPCPolicy)]
        if not (self.log_parameters and mpcs):
            return
        for name, value in learned_values(mpcs[0]).items():
            entries = value.flatten().tolist()
            if len(entries) == 1:
                self.logger.record(f"mpc_param/{name}", float(entries[0]))
            else:
                for i, entry in enumerate(entries):
                    self.logger.record(f"mpc_param/{name}_{i}", float(entry))
