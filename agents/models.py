"""The learners of an experiment, built from its config, and their distance to the truth.

mpc.dx / mpc.cost / mpc.cost.dx / sysid learn an ``MPCPolicy`` whose dynamics is the
system's own model class with physical parameters as ``nn.Parameter``s (the windy pendulum
is learned with the simple pendulum's model, which cannot represent it: the paper's
non-realizable experiment, section 5.4) and whose cost is the paper's
C(tau) = sum_i w_i (tau_i - goal_i)^2; nn learns ``SequenceNetwork``.

Only some parameter combinations are identifiable from controls: the pendulum moves by
th_ddot = 3 g/(2 l) sin th + 3 u/(m l^2), so g/l and m l^2 are, not g, m, l; the cart-pole's
four parameters all are. A cost's weights matter only up to a common scale.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy import GoalWeightedCost
from mpc_policy.agents.config import ExperimentConfig
from mpc_policy.agents.nn_baseline import SequenceNetwork
from mpc_policy.agents.systems import system_params, task_cost
from mpc_policy.envs import CartPoleDynamics, PendulumDynamics, SystemDynamics
from mpc_policy.envs.expert import SYSTEMS
from mpc_policy.envs.params import CartPoleParams, PendulumParams
from mpc_policy.policy import MPCPolicy

__all__ = [
    "build_learner",
    "model_errors",
    "parameter_groups",
    "parameter_values",
    "true_dynamics",
]

# the learner's model class for each system
MODEL_CLASS: dict[str, type[SystemDynamics]] = {
    "pendulum": PendulumDynamics,
    "cartpole": CartPoleDynamics,
    "windy_pendulum": PendulumDynamics,
}
MODEL_PARAMS: dict[str, type[PendulumParams] | type[CartPoleParams]] = {
    "pendulum": PendulumParams,
    "cartpole": CartPoleParams,
    "windy_pendulum": PendulumParams,
}
# learner solver defaults: the modules' exact Jacobians; unconverged rows pass no gradient
SOLVER_DEFAULTS: dict[str, Any] = {"jacobian": "analytic", "on_unconverged": "zero_grad"}


def true_dynamics(config: ExperimentConfig) -> SystemDynamics | None:
    """The expert's dynamics if the learner's model class contains it, else None."""
    truth = system_params(config.system, config.data.env_params)
    if type(truth) is not MODEL_PARAMS[config.system]:
        return None
    return MODEL_CLASS[config.system](truth, dtype=torch.float64)


def learner_dynamics(config: ExperimentConfig) -> SystemDynamics:
    """The learner's model class at ``model.dynamics_init`` (float64 parameters); the
    constants it does not learn (dt, bounds) are the expert system's."""
    model_class, params_class = MODEL_CLASS[config.system], MODEL_PARAMS[config.system]
    truth = system_params(config.system, config.data.env_params)
    shared = {f.name: getattr(truth, f.name) for f in dataclasses.fields(params_class)}
    dynamics = model_class(params_class(**shared), dtype=torch.float64)
    names = dict(dynamics.named_parameters())
    for name, value in config.model.dynamics_init.items():
        if name not in names:
            raise ValueError(
                f"model.dynamics_init: {name!r} is not a parameter of {model_class.__name__}; "
                f"the parameters are {sorted(names)}"
            )
        with torch.no_grad():
            names[name].fill_(float(value))
    return dynamics


def learner_cost(config: ExperimentConfig) -> GoalWeightedCost:
    """The task's cost, or ``model.cost_init`` when given (float64)."""
    task = task_cost(config.system)
    init = config.model.cost_init
    if init is None:
        return task
    size = task.goal.shape[0]
    for key in ("weights", "goal"):
        if len(init[key]) != size:
            raise ValueError(
                f"model.cost_init.{key}: expected {size} values (n+m), received {len(init[key])}"
            )
    return GoalWeightedCost(
        torch.tensor(init["weights"], dtype=torch.float64),
        torch.tensor(init["goal"], dtype=torch.float64),
    )


def build_learner(config: ExperimentConfig) -> nn.Module:
    """The learner of ``config.model.method``, with only the learned parameters requiring
    gradients: an ``MPCPolicy`` (float64 solve) or a ``SequenceNetwork``."""
    method = config.model.method
    spec = SYSTEMS[config.system]
    n_state, n_ctrl = MODEL_CLASS[config.system].n_state, MODEL_CLASS[config.system].n_ctrl
    if method == "nn":
        return SequenceNetwork(n_state, n_ctrl, config.data.horizon, config.model.hidden_size)
    learns_cost = method in ("mpc.cost", "mpc.cost.dx")
    if learns_cost and config.model.cost_init is None:
        raise ValueError(f"model.cost_init: required for {method} (the learned cost's start)")
    dynamics = learner_dynamics(config).requires_grad_(method != "mpc.cost")
    cost = learner_cost(config).requires_grad_(learns_cost)
    return MPCPolicy(
        dynamics,
        cost,
        config.data.horizon,
        u_lower=-spec.control_bound,
        u_upper=spec.control_bound,
        solve_dtype=torch.float64,
        **{**SOLVER_DEFAULTS, **config.model.solver},
    )


def parameter_groups(learner: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The learned parameters by group: "dynamics", "cost_goal", "cost_weights" (MPC) or
    "network" (nn); groups without a learned parameter are left out."""
    if isinstance(learner, MPCPolicy):
        groups = {"dynamics": list(learner.dynamics.parameters())}
        if isinstance(learner.cost, GoalWeightedCost):
            groups["cost_goal"] = [learner.cost.goal]
            groups["cost_weights"] = [learner.cost.raw_weights]
        else:
            groups["cost"] = list(learner.cost.parameters())
    else:
        groups = {"network": list(learner.parameters())}
    groups = {k: [p for p in v if p.requires_grad] for k, v in groups.items()}
    return {k: v for k, v in groups.items() if v}


def parameter_values(learner: nn.Module) -> dict[str, float]:
    """Each learned physical parameter and cost entry by name (empty for a network)."""
    if not isinstance(learner, MPCPolicy):
        return {}
    with torch.no_grad():
        values = {
            f"dynamics/{name}": float(p)
            for name, p in learner.dynamics.named_parameters()
            if p.requires_grad and p.numel() == 1
        }
        cost = learner.cost
        if isinstance(cost, GoalWeightedCost) and cost.goal.requires_grad:
            values.update({f"cost/weight_{i}": float(w) for i, w in enumerate(cost.weights)})
            values.update({f"cost/goal_{i}": float(g) for i, g in enumerate(cost.goal)})
    return values


def identifiable(dynamics: nn.Module) -> dict[str, Tensor]:
    """The combinations of the physical parameters that the motion determines."""
    if isinstance(dynamics, PendulumDynamics):
        g, m, l = dynamics.gravity, dynamics.mass, dynamics.length
        return {"g_over_l": g / l, "m_l2": m * l * l}
    return {name: p for name, p in dynamics.named_parameters() if p.numel() == 1}


def model_errors(learner: nn.Module, config: ExperimentConfig) -> dict[str, float]:
    """Distances to the truth where it is known: relative errors of the identifiable
    dynamics combinations, the paper's model loss MSE(theta, theta_true) over the physical
    parameters, and for a learned cost the MSE of its goal and of its weights normalized to
    sum 1 (their scale is not identifiable)."""
    if not isinstance(learner, MPCPolicy):
        return {}
    errors: dict[str, float] = {}
    truth = true_dynamics(config)
    if truth is not None and config.model.method != "mpc.cost":
        dynamics: nn.Module = learner.dynamics
        with torch.no_grad():
            learned, true = identifiable(dynamics), identifiable(truth)
            for name, value in learned.items():
                errors[f"dynamics_{name}_relative"] = float(abs(value / true[name] - 1.0))
            pairs = zip(dynamics.parameters(), truth.parameters())
            errors["dynamics_params_mse"] = float(
                torch.stack([(p - q).pow(2) for p, q in pairs]).mean()
            )
    cost = learner.cost
    if config.model.method in ("mpc.cost", "mpc.cost.dx") and isinstance(cost, GoalWeightedCost):
        task = task_cost(config.system)
        with torch.no_grad():
            errors["cost_goal_mse"] = float((cost.goal - task.goal).pow(2).mean())
            w, w_true = cost.weights, task.weights
            errors["cost_weights_normalized_mse"] = float(
                (w / w.sum() - w_true / w_true.sum()).pow(2).mean()
            )
    return errors
