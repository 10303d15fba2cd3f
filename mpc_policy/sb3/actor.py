"""What every MPC actor here shares: one solve per batch of observations, and its report.

An actor's action (mean) for observations o (B, n_obs) is the first control u_1(o) (B, m)
of the ``MPCPolicy``'s plan; SAC and TD3 act in the action box scaled onto [-1, 1]:

    scale(u) = 2 (u - low) / (high - low) - 1.

The solve's own report (``Solution.info``) is added to the actor's ``SolverHealth`` under
the phase SB3 announces with ``set_training_mode``: "update" in training mode (a gradient
step), "rollout" otherwise (collection, ``predict``, evaluation, TD3's target actor).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor

from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3.checks import action_bounds
from mpc_policy.solution import SolverInfo

__all__ = ["PHASES", "STATS", "MPCActor", "SolverHealth", "initial_log_std"]

# the message of ``SolverInfo.enforce`` for unconverged elements
_UNCONVERGED = r"\d+ of \d+ batch elements "

PHASES = ("rollout", "update")
TOTALS = (
    "solves",
    "iterations",
    "max_iterations",
    "unconverged",
    "calls",
    "seconds",
    "max_seconds",
)
# the logged statistics (``SolverHealth.scalars``) and their keys in ``SolverHealth.summary``
STATS = {
    "iterations_mean": "iterations",
    "iterations_max": "max_iterations",
    "unconverged_fraction": "unconverged_fraction",
    "solves": "solves",
    "solve_time_mean": "solve_time",
    "solve_time_max": "max_solve_time",
}
# default exploration: a standard deviation of a quarter of the action box's half-width
STD_FRACTION = 0.25


class SolverHealth:
    """Running totals of an actor's MPC solves, per phase ("rollout", "update")."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}

    def record(self, info: SolverInfo, phase: str, seconds: float = 0.0) -> None:
        """Add the report of one solve (B rows) that took ``seconds`` to ``phase``."""
        if phase not in PHASES:
            raise ValueError(f"phase: expected one of {PHASES}, received {phase!r}")
        totals = self.totals.setdefault(phase, dict.fromkeys(TOTALS, 0.0))
        totals["solves"] += info.iterations.numel()
        totals["iterations"] += float(info.iterations.sum())
        totals["max_iterations"] = max(totals["max_iterations"], float(info.iterations.max()))
        totals["unconverged"] += float((~info.converged).sum())
        totals["calls"] += 1.0
        totals["seconds"] += seconds
        totals["max_seconds"] = max(totals["max_seconds"], seconds)

    def summary(self) -> dict[str, float]:
        """{"<phase>_iterations" (mean per solved row), "<phase>_max_iterations",
        "<phase>_unconverged_fraction", "<phase>_solves" (rows), "<phase>_solve_time"
        (mean seconds per batched solve), "<phase>_max_solve_time"} for the phases seen."""
        out = {}
        for phase, totals in self.totals.items():
            solves = max(totals["solves"], 1.0)
            out[f"{phase}_iterations"] = totals["iterations"] / solves
            out[f"{phase}_max_iterations"] = totals["max_iterations"]
            out[f"{phase}_unconverged_fraction"] = totals["unconverged"] / solves
            out[f"{phase}_solves"] = totals["solves"]
            out[f"{phase}_solve_time"] = totals["seconds"] / max(totals["calls"], 1.0)
            out[f"{phase}_max_solve_time"] = totals["max_seconds"]
        return out

    def scalars(self) -> dict[str, float]:
        """The summary under the tags that behaviour cloning's training log uses too
        (``mpc_policy.agents.train.logging``): ``solver/<stat>`` for the solves of gradient steps
        (the "update" phase), ``solver/rollout/<stat>`` for the acting ones, with <stat>
        iterations_mean, iterations_max, unconverged_fraction, solves, solve_time_mean and
        solve_time_max (seconds per batched solve)."""
        summary = self.summary()
        out = {}
        for phase in self.totals:
            group = "solver" if phase == "update" else f"solver/{phase}"
            for stat, key in STATS.items():
                out[f"{group}/{stat}"] = summary[f"{phase}_{key}"]
        return out

    def reset(self) -> None:
        self.totals.clear()

    def absorb(self, other: SolverHealth) -> None:
        """Add another report's totals to this one and reset the other."""
        for phase, totals in other.totals.items():
            into = self.totals.setdefault(phase, dict.fromkeys(TOTALS, 0.0))
            for key, value in totals.items():
                into[key] = max(into[key], value) if key.startswith("max_") else into[key] + value
        other.reset()


def initial_log_std(
    log_std_init: float | None, action_space: spaces.Space, squashed: bool
) -> Tensor:
    """(m,) initial log standard deviations: ``log_std_init`` everywhere, or by default a
    quarter of the half-width of the action box (of [-1, 1] for a squashed actor)."""
    low, high = action_bounds(action_space)
    if log_std_init is not None:
        return torch.full(low.shape, float(log_std_init))
    half_width = np.ones_like(low) if squashed else (high - low) / 2.0
    return torch.as_tensor(np.log(STD_FRACTION * half_width), dtype=torch.float32)


class MPCActor:
    """Mixin of the SB3 modules whose action (mean) is an ``MPCPolicy``'s first control.

    The class it is mixed into (an SB3 ``BasePolicy``) provides ``training`` (set by SB3's
    ``set_training_mode``), the spaces and ``normalize_images``; ``_build`` or ``__init__``
    sets ``mpc`` and ``solver_health``.
    """

    mpc: MPCPolicy
    solver_health: SolverHealth
    training: bool
    observation_space: spaces.Space
    action_space: spaces.Space
    normalize_images: bool

    @property
    def phase(self) -> str:
        """The phase of the next solve: "update" while SB3 has this module in training mode
        (``set_training_mode(True)``, before its gradient steps), "rollout" otherwise."""
        return "update" if self.training else "rollout"

    def first_control(self, obs: PyTorchObs) -> Tensor:
        """u_1 (B, m) in the observation dtype for SB3 observations (B, n_obs); the solve's
        report goes to ``solver_health`` under the current phase."""
        observation = preprocess_obs(obs, self.observation_space, self.normalize_images)
        if not isinstance(observation, Tensor):
            raise TypeError(
                f"obs: expected a Box observation (one tensor), received {type(observation)}"
            )
        start = time.perf_counter()
        with warnings.catch_warnings():
            # the report of unconverged elements is counted by solver_health and logged by
            # MPCHealthCallback: no warning per solve in a training loop
            warnings.filterwarnings("ignore", _UNCONVERGED, RuntimeWarning)
            solution = self.mpc.plan(observation)
        self.solver_health.record(solution.info, self.phase, time.perf_counter() - start)
        return solution.u[:, 0]

    def scaled_control(self, obs: PyTorchObs) -> Tensor:
        """u_1 (B, m) mapped from the action box onto [-1, 1]^m (clamped)."""
        u = self.first_control(obs)
        low, high = (
            torch.as_tensor(b, dtype=u.dtype, device=u.device)
            for b in action_bounds(self.action_space)
        )
        return (2.0 * (u - low) / (high - low) - 1.0).clamp(-1.0, 1.0)
