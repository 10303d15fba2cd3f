"""Callbacks for ``model.learn``: the MPC's health and parameters in the logs, and progress.

``MPCHealthCallback`` records, at the end of every rollout, what the actors' solves reported
since the previous one (``SolverHealth``) and the learned parameters. ``TqdmCallback`` is a
progress bar on plain tqdm (SB3's ``progress_bar=True`` needs the extra ``rich`` package)
that also shows the mean episode return.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3.actor import MPCActor, SolverHealth
from mpc_policy.sb3.building import learned_values

__all__ = ["MPCHealthCallback", "TqdmCallback"]


class MPCHealthCallback(BaseCallback):
    """Logs the MPC's health and learned parameters at the end of every rollout.

    Records (floats, through SB3's logger, so to tensorboard with ``tensorboard_log``):
    ``mpc/<phase>_iterations`` (mean outer iterations per solved row),
    ``mpc/<phase>_max_iterations``, ``mpc/<phase>_unconverged_fraction`` and
    ``mpc/<phase>_solves`` over the solves since the last rollout end, for the phases
    "rollout" (SB3's evaluation mode: acting, ``predict``, targets) and "update" (training
    mode: the previous policy update); and, with ``log_parameters``, ``mpc_param/<name>``
    (``_<i>`` per entry of a vector) for each learned MPC parameter.

    Args:
        log_parameters: also record the learned parameters.
        verbose: SB3's verbosity.
    """

    def __init__(self, log_parameters: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_parameters = log_parameters

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        merged = SolverHealth()
        for module in self.model.policy.modules():
            if isinstance(module, MPCActor):
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


class TqdmCallback(BaseCallback):
    """A tqdm progress bar over ``model.learn``'s environment steps (on stderr), showing
    the mean return of the last episodes (SB3's ``ep_info_buffer``) once one has ended.

    Args:
        description: the bar's label.
        **tqdm_kwargs: passed to ``tqdm`` (e.g. ``disable=True``, ``mininterval=5``).
    """

    def __init__(self, description: str = "learning", **tqdm_kwargs: Any) -> None:
        super().__init__()
        self.description = description
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        total = self.locals["total_timesteps"] - self.model.num_timesteps
        self.bar = tqdm(total=total, desc=self.description, unit="step", **self.tqdm_kwargs)

    def _on_step(self) -> bool:
        assert self.bar is not None
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        assert self.bar is not None
        episodes = self.model.ep_info_buffer
        if episodes:
            mean = sum(float(e["r"]) for e in episodes) / len(episodes)
            self.bar.set_postfix(mean_return=f"{mean:.1f}", refresh=False)

    def _on_training_end(self) -> None:
        assert self.bar is not None
        self.bar.close()
