"""The learners of an experiment and their distance to the truth.

mpc.dx / mpc.cost / mpc.cost.dx / sysid learn an ``MPCPolicy`` whose dynamics is the
system's model class (``System.model_class``) with physical parameters as
``nn.Parameter``s (the windy pendulum is learned with the simple pendulum's model, which
cannot represent it: the paper's non-realizable experiment, section 5.4) and whose cost is
the paper's C(tau) = sum_i w_i (tau_i - goal_i)^2; nn learns ``SequenceNetwork``.

Only some parameter combinations are identifiable from controls (``System.identifiable``:
the pendulum's g/l and m l^2, not g, m, l). A cost's weights matter only up to a common
scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy import GoalWeightedCost
from mpc_policy.envs.model import SystemDynamics
from mpc_policy.envs.registry import System
from mpc_policy.policy import MPCPolicy

from ..config import ModelConfig
from .nn_baseline import SequenceNetwork

__all__ = [
    "COST_METHODS",
    "DYNAMICS_METHODS",
    "ModelReport",
    "build_learner",
    "learner_dynamics",
    "parameter_groups",
    "parameter_values",
]

# learner solver defaults: the modules' exact Jacobians; unconverged rows pass no gradient
SOLVER_DEFAULTS: dict[str, Any] = {"jacobian": "analytic", "on_unconverged": "zero_grad"}
DYNAMICS_METHODS = ("sysid", "mpc.dx", "mpc.cost.dx")
COST_METHODS = ("mpc.cost", "mpc.cost.dx")


def learner_dynamics(
    system: System,
    dynamics_init: Mapping[str, float],
    env_params: Mapping[str, float] | None = None,
) -> SystemDynamics:
    """The system's model class at ``dynamics_init`` (float64 parameters, by
    ``nn.Parameter`` name); the constants it does not learn (dt, bounds) are the truth's."""
    dynamics = system.initial_model(env_params)
    names = dict(dynamics.named_parameters())
    for name, value in dynamics_init.items():
        if name not in names:
            raise ValueError(
                f"model.dynamics_init: {name!r} is not a parameter of "
                f"{system.model_class.__name__}; the parameters are {sorted(names)}"
            )
        with torch.no_grad():
            names[name].fill_(float(value))
    return dynamics


def learner_cost(system: System, cost_init: Mapping[str, list[float]] | None) -> nn.Module:
    """The task's cost, or a ``GoalWeightedCost`` at ``cost_init`` when given (float64)."""
    task = system.task_cost()
    if cost_init is None:
        return task
    size = system.n_state + system.n_ctrl
    for key in ("weights", "goal"):
        if len(cost_init[key]) != size:
            raise ValueError(
                f"model.cost_init.{key}: expected {size} values (n+m), "
                f"received {len(cost_init[key])}"
            )
    return GoalWeightedCost(
        torch.tensor(cost_init["weights"], dtype=torch.float64),
        torch.tensor(cost_init["goal"], dtype=torch.float64),
    )


def build_learner(
    system: System,
    model: ModelConfig,
    horizon: int,
    env_params: Mapping[str, float] | None = None,
    on_unconverged: str | None = None,
) -> nn.Module:
    """The learner of ``model.method``, with only the learned parameters requiring
    gradients: an ``MPCPolicy`` (float64 solve) or a ``SequenceNetwork``.

    Args:
        system: the system's record.
        model: the ``model`` section (method, starting point, solver options).
        horizon: the planning horizon T.
        env_params: the truth's overrides (the constants the model does not learn).
        on_unconverged: overrides the solver's ``on_unconverged`` (e.g. "ignore" where
            nothing is differentiated and convergence is reported instead).
    """
    method = model.method
    if method == "nn":
        return SequenceNetwork(system.n_state, system.n_ctrl, horizon, model.hidden_size)
    learns_cost = method in COST_METHODS
    if learns_cost and model.cost_init is None:
        raise ValueError(f"model.cost_init: required for {method} (the learned cost's start)")
    dynamics = learner_dynamics(system, model.dynamics_init, env_params)
    dynamics.requires_grad_(method in DYNAMICS_METHODS)
    cost = learner_cost(system, model.cost_init).requires_grad_(learns_cost)
    options = {**SOLVER_DEFAULTS, **model.solver}
    if on_unconverged is not None:
        options["on_unconverged"] = on_unconverged
    return MPCPolicy(
        dynamics,
        cost,
        horizon,
        u_lower=-system.control_bound,
        u_upper=system.control_bound,
        solve_dtype=torch.float64,
        **options,
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


class ModelReport:
    """Distances of a learner to the truth where it is known, with the truth built once.

    Args:
        system: the system's record.
        method: the learning method (which parts are learned).
        env_params: the truth's overrides.
    """

    def __init__(
        self, system: System, method: str, env_params: Mapping[str, float] | None = None
    ) -> None:
        self.system = system
        self.learns_dynamics = method in DYNAMICS_METHODS
        truth = system.model_of_truth(env_params) if self.learns_dynamics else None
        with torch.no_grad():
            self.true_identifiable: dict[str, Tensor] | None = (
                None
                if truth is None
                else {k: v.detach() for k, v in system.identifiable(truth).items()}
            )
            self.true_parameters = (
                None if truth is None else [p.detach().clone() for p in truth.parameters()]
            )
        cost = system.task_cost() if method in COST_METHODS else None
        self.task_cost = cost if isinstance(cost, GoalWeightedCost) else None

    def identifiable(self, learner: nn.Module) -> dict[str, tuple[float, float | None]]:
        """Each identifiable combination of a learned model: (learned, true or None; None
        where the model class does not contain the truth); empty for a network or a
        learner of the cost alone."""
        if not isinstance(learner, MPCPolicy) or not self.learns_dynamics:
            return {}
        truth = self.true_identifiable or {}
        with torch.no_grad():
            learned = self.system.identifiable(learner.dynamics)
            return {
                name: (float(value), float(truth[name]) if name in truth else None)
                for name, value in learned.items()
            }

    def errors(self, learner: nn.Module) -> dict[str, float]:
        """Relative errors of the identifiable dynamics combinations, the paper's model loss
        MSE(theta, theta_true) over the physical parameters, and for a learned cost the MSE
        of its goal and of its weights normalized to sum 1 (their scale is not
        identifiable)."""
        if not isinstance(learner, MPCPolicy):
            return {}
        errors: dict[str, float] = {}
        with torch.no_grad():
            if self.true_identifiable is not None and self.true_parameters is not None:
                for name, (value, true) in self.identifiable(learner).items():
                    if true is not None:
                        errors[f"dynamics_{name}_relative"] = abs(value / true - 1.0)
                pairs = zip(learner.dynamics.parameters(), self.true_parameters)
                errors["dynamics_params_mse"] = float(
                    torch.stack([(p - q).pow(2) for p, q in pairs]).mean()
                )
            cost, task = learner.cost, self.task_cost
            if task is not None and isinstance(cost, GoalWeightedCost):
                errors["cost_goal_mse"] = float((cost.goal - task.goal).pow(2).mean())
                w, w_true = cost.weights, task.weights
                errors["cost_weights_normalized_mse"] = float(
                    (w / w.sum() - w_true / w_true.sum()).pow(2).mean()
                )
        return errors
