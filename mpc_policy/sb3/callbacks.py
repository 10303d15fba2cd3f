"""Callbacks for ``model.learn``: the MPC's health and parameters in the logs, and progress.

``MPCHealthCallback`` records, at the end of every rollout, what the actors' solves reported
since the logger's last dump (``SolverHealth``) and the learned parameters. ``TqdmCallback`` is a
progress bar on plain tqdm (SB3's ``progress_bar=True`` needs the extra ``rich`` package)
that also shows the mean episode return. ``EvaluationCurve`` keeps the learning curve of
an ``EvalCallback`` in memory, every evaluation from the same start states.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv
from tqdm.auto import tqdm

from mpc_policy.costs import GoalWeightedCost
from mpc_policy.policy import MPCPolicy
from mpc_policy.sb3.actor import MPCActor, SolverHealth
from mpc_policy.sb3.building import learned_values
from mpc_policy.sb3.checks import check_env

__all__ = ["EvaluationCurve", "MPCHealthCallback", "TqdmCallback", "parameter_scalars"]


def parameter_scalars(mpc: MPCPolicy) -> dict[str, float]:
    """The learned parameters under the tags behaviour cloning's training log uses too:
    ``params/<name>``, the parameter's dotted name as a path ("params/dynamics/mass"), an
    entry of a vector suffixed with its index ("params/cost/goal_0"); a
    ``GoalWeightedCost``'s positive weights as "params/cost/weight_<i>"."""
    out = {}
    for name, value in learned_values(mpc).items():
        path = "params/" + name.replace(".", "/")
        if isinstance(mpc.cost, GoalWeightedCost) and name == "cost.weights":
            path = "params/cost/weight"
        entries = value.flatten().tolist()
        if value.dim() == 0:
            out[path] = float(entries[0])
        else:
            out.update({f"{path}_{i}": float(entry) for i, entry in enumerate(entries)})
    return out


class MPCHealthCallback(BaseCallback):
    """Logs the MPC's health and learned parameters, every solve since the last dump.

    At every rollout end it records, through SB3's logger (so to tensorboard with
    ``tensorboard_log``), the statistics of all the actors' solves since the logger's last
    dump (``SolverHealth.scalars``): ``solver/<stat>`` for the solves of gradient steps
    (SB3's training mode), ``solver/rollout/<stat>`` for acting (collection, ``predict``,
    evaluation, TD3's target actor), <stat> among iterations_mean, iterations_max,
    unconverged_fraction, solves (rows), solve_time_mean and solve_time_max (seconds per
    batched forward solve); and, with ``log_parameters``, the learned parameters by name
    (``parameter_scalars``: "params/dynamics/mass", "params/cost/weight_3"). The tags are
    those of behaviour cloning's training log.

    Off-policy algorithms end a rollout every ``train_freq`` steps but dump only every
    ``log_interval`` episodes: the values recorded at each rollout end aggregate every
    solve since the previous dump (a spike between dumps is kept), and start afresh once
    the logger has dumped them.

    Args:
        log_parameters: also record the learned parameters.
        verbose: SB3's verbosity.
    """

    def __init__(self, log_parameters: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.log_parameters = log_parameters
        self.since_dump = SolverHealth()
        self.recorded: set[str] = set()

    def _on_training_start(self) -> None:
        check_env(self.training_env)  # the environment may have changed (``set_env``)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        pending = getattr(self.logger, "name_to_value", {})
        if self.recorded and not any(tag in pending for tag in self.recorded):
            self.since_dump.reset()  # the logger wrote what was recorded, then cleared it
        for module in self.model.policy.modules():
            if isinstance(module, MPCActor):
                self.since_dump.absorb(module.solver_health)
        scalars = self.since_dump.scalars()
        mpcs = [m for m in self.model.policy.modules() if isinstance(m, MPCPolicy)]
        if self.log_parameters and mpcs:
            scalars.update(parameter_scalars(mpcs[0]))
        for tag, number in scalars.items():
            self.logger.record(tag, float(number))
        self.recorded = set(scalars)


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


class EvaluationCurve(BaseCallback):
    """The evaluation curve of a run: one row per evaluation, the environments reseeded
    after each, so that every evaluation starts from the same states (the curve then
    compares policies, not start states).

    Pass it as ``EvalCallback(..., log_path=..., callback_after_eval=curve)`` (the episode
    returns are kept by an EvalCallback with a log path), and call ``evaluate`` for an
    evaluation outside it (e.g. before learning; ``init_callback(model)`` first). A row
    holds ``steps``, ``mean_return``, ``std_return`` over the evaluation's episodes and,
    for an MPC policy, every entry of its learned parameters (``learned_values``).

    Args:
        eval_seed: the seed the evaluation environments are reset to after each evaluation.
    """

    def __init__(self, eval_seed: int) -> None:
        super().__init__()
        self.eval_seed = eval_seed
        self.rows: list[dict[str, float]] = []

    def evaluate(self, eval_env: VecEnv, n_episodes: int) -> None:
        """Evaluate the model now (deterministic actions), record the row and reseed."""
        check_env(eval_env)
        returns, _ = evaluate_policy(self.model, eval_env, n_episodes, return_episode_rewards=True)
        assert isinstance(returns, list)  # return_episode_rewards: one return per episode
        self.record(self.model.num_timesteps, [float(r) for r in returns])
        eval_env.seed(self.eval_seed)

    def record(self, steps: int, returns: list[float]) -> None:
        """Append the row of an evaluation at ``steps`` with episode ``returns``."""
        episodes = torch.tensor(returns, dtype=torch.float64)
        row = {
            "steps": float(steps),
            "mean_return": float(episodes.mean()),
            "std_return": float(episodes.std(correction=0)),
        }
        mpcs = [m for m in self.model.policy.modules() if isinstance(m, MPCPolicy)]
        for name, value in learned_values(mpcs[0]).items() if mpcs else ():
            for i, entry in enumerate(value.flatten().tolist()):
                row[f"{name}[{i}]" if value.numel() > 1 else name] = entry
        self.rows.append(row)

    def _on_step(self) -> bool:
        if not isinstance(self.parent, EvalCallback):
            raise TypeError(
                "EvaluationCurve: expected to run as an EvalCallback's callback_after_eval, "
                f"received parent {type(self.parent).__name__}"
            )
        if not self.parent.evaluations_results:
            raise ValueError(
                "EvaluationCurve: expected an EvalCallback with log_path set (it keeps the "
                "episode returns), received log_path=None"
            )
        self.record(self.num_timesteps, [float(r) for r in self.parent.evaluations_results[-1]])
        self.parent.eval_env.seed(self.eval_seed)
        return True
