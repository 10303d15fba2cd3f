"""Behaviour cloning of an MPC expert on whole nominal action sequences (paper, section 5.3).

The learner minimizes the imitation loss

    L(theta) = E_x || u_{1:T}(x; theta) - u_{1:T}(x; theta_expert) ||^2

(as the mean squared error per control entry) over the training trajectories, with
minibatches, for any subset of its parameters. Each epoch it evaluates the loss on the
validation and test trajectories; the reported figure is the test loss at the epoch of the
best validation loss. Every epoch ends with an atomic checkpoint (model, optimizer,
scheduler, epoch, random generators, warm starts, best so far), from which an interrupted
run resumes as if it had not stopped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mpc_policy.agents.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from mpc_policy.agents.config import ExperimentConfig
from mpc_policy.agents.datasets import ExpertDataset
from mpc_policy.agents.guards import check_loss, check_parameters, restore_optimizer
from mpc_policy.agents.logging import TrainingLog, summarize_warnings
from mpc_policy.agents.models import model_errors, parameter_groups, parameter_values
from mpc_policy.agents.nn_baseline import SequenceNetwork
from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import SolverInfo

__all__ = ["Batch", "ImitationObjective", "TrainResult", "Trainer", "WarmStarts"]

EVAL_CHUNK = 256


@dataclass
class Batch:
    """Rows of one split: x (B, n) start states, u (B, T, m) expert nominal actions,
    x_plan (B, T, n) the expert's planned states, rows (B,) their indices in the split."""

    split: str
    rows: Tensor
    x: Tensor
    u: Tensor
    x_plan: Tensor


class WarmStarts:
    """Per-sample warm starts (N, T, m) for each split: a sample's solve starts where its
    last one ended (the paper's code), and all restart from zeros every few epochs."""

    def __init__(self, sizes: dict[str, int], horizon: int, n_ctrl: int) -> None:
        self.buffers = {
            s: torch.zeros(n, horizon, n_ctrl, dtype=torch.float64) for s, n in sizes.items()
        }

    def reset(self) -> None:
        for buffer in self.buffers.values():
            buffer.zero_()


class Objective(Protocol):
    learner: nn.Module

    def predict(self, batch: Batch) -> tuple[Tensor, SolverInfo | None]: ...

    def train_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float], SolverInfo | None]: ...


def imitation_loss(u: Tensor, u_expert: Tensor) -> Tensor:
    """Mean squared error per control entry between (B, T, m) sequences."""
    return (u - u_expert).pow(2).mean()


class ImitationObjective:
    """Predict nominal action sequences with an ``MPCPolicy`` (warm-started per sample) or
    a network with ``sequences(x)``, and minimize the imitation loss."""

    def __init__(self, learner: nn.Module, warm_starts: WarmStarts | None) -> None:
        self.learner = learner
        self.warm_starts = warm_starts

    def predict(self, batch: Batch) -> tuple[Tensor, SolverInfo | None]:
        if isinstance(self.learner, SequenceNetwork):
            return self.learner.sequences(batch.x), None
        if not isinstance(self.learner, MPCPolicy):
            raise TypeError(
                f"learner: expected an MPCPolicy or a SequenceNetwork, received "
                f"{type(self.learner).__name__}"
            )
        warm = None if self.warm_starts is None else self.warm_starts.buffers[batch.split]
        solution = self.learner.plan(batch.x, None if warm is None else warm[batch.rows])
        if warm is not None:  # a NONFINITE row (NaN plan) restarts from zeros
            warm[batch.rows] = solution.u.detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return solution.u, solution.info

    def train_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float], SolverInfo | None]:
        u, info = self.predict(batch)
        loss = imitation_loss(u, batch.u)
        return loss, {"loss/train": float(loss.detach())}, info


@dataclass
class TrainResult:
    """Summary of a training run (all epochs so far, across resumptions)."""

    epochs_done: int
    best_epoch: int
    best_val_loss: float
    test_loss_at_best_val: float
    last_train_loss: float
    checkpoint: str
    best_checkpoint: str
    log_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Minibatch training with per-epoch evaluation, logging and checkpoints.

    Args:
        config: the experiment (``train`` section: optimizer, epochs, batch size, ...).
        objective: what the learner predicts and minimizes.
        dataset: the expert data, split into train / val / test trajectories.
        run_dir: where ``checkpoints/`` and ``tensorboard/`` go.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        objective: Objective,
        dataset: ExpertDataset,
        run_dir: str | Path,
        apply_new_settings: bool = False,
    ) -> None:
        self.config, self.objective = config, objective
        self.apply_new_settings = apply_new_settings
        self.learner = objective.learner
        self.run_dir = Path(run_dir)
        self.splits = {
            "train": self._tensors(dataset.split("train", config.train.n_train)),
            "val": self._tensors(dataset.split("val")),
            "test": self._tensors(dataset.split("test")),
        }
        self.groups = parameter_groups(self.learner)
        if not self.groups:
            raise ValueError(f"model.method {config.model.method}: nothing to learn")
        train = config.train
        method_is_nn = config.model.method == "nn"
        kind = train.optimizer or ("adam" if method_is_nn else "rmsprop")
        lr = train.lr or (1e-4 if method_is_nn else 1e-2)
        params = [p for group in self.groups.values() for p in group]
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=lr)
            if kind == "adam"
            else torch.optim.RMSprop(params, lr=lr, alpha=train.alpha)
        )
        n_batches = -(-self.splits["train"]["x"].shape[0] // train.batch_size)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, train.epochs * n_batches)
            if train.scheduler == "cosine"
            else None
        )
        self.shuffle = torch.Generator().manual_seed(train.seed)
        self.epoch = 0
        self.best = {"epoch": -1, "val": float("inf"), "test": float("inf")}
        self.last_train_loss = float("nan")

    @staticmethod
    def _tensors(split: ExpertDataset) -> dict[str, Tensor]:
        data = split.tensors()
        return {"x": data["states"], "u": data["nominal_actions"], "x_plan": data["nominal_states"]}

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    def _batch(self, split: str, rows: Tensor) -> Batch:
        data = self.splits[split]
        return Batch(split, rows, data["x"][rows], data["u"][rows], data["x_plan"][rows])

    def _active_groups(self, epoch: int) -> set[str]:
        """The cost's goal and weights take turns, K epochs each, goal first."""
        every = self.config.model.alternate_every
        names = set(self.groups)
        if every and {"cost_goal", "cost_weights"} <= names:
            names.discard("cost_weights" if ((epoch - 1) // every) % 2 == 0 else "cost_goal")
        return names

    def evaluate(self, split: str) -> float:
        """Imitation loss on a whole split (no gradients)."""
        n = self.splits[split]["x"].shape[0]
        total = 0.0
        with torch.no_grad():
            for start in range(0, n, EVAL_CHUNK):
                batch = self._batch(split, torch.arange(start, min(start + EVAL_CHUNK, n)))
                u, _ = self.objective.predict(batch)
                total += float((u - batch.u).pow(2).sum())
        return total / self.splits[split]["u"].numel()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.learner.train()
        train = self.config.train
        warm = getattr(self.objective, "warm_starts", None)
        if warm is not None and (epoch - 1) % train.warm_start_reset == 0:
            warm.reset()
        active = self._active_groups(epoch)
        order = torch.randperm(self.splits["train"]["x"].shape[0], generator=self.shuffle)
        sums: Counter[str] = Counter()
        infos: list[SolverInfo] = []
        n_batches = 0
        for start in range(0, order.numel(), train.batch_size):
            batch = self._batch("train", order[start : start + train.batch_size])
            loss, logs, info = self.objective.train_loss(batch)
            check_loss(epoch, loss, f"training loss of batch {n_batches + 1}", info)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, group in self.groups.items():
                if name not in active:
                    for p in group:
                        p.grad = None
            self.optimizer.step()
            check_parameters(epoch, self.learner, f"in the optimizer step of batch {n_batches + 1}")
            if self.scheduler is not None:
                self.scheduler.step()
            sums.update(logs)
            infos += [info] if info is not None else []
            n_batches += 1
        scalars = {k: v / n_batches for k, v in sums.items()}
        if infos:
            iterations = torch.cat([i.iterations for i in infos]).double()
            converged = torch.cat([i.converged for i in infos])
            scalars["solver/iterations_mean"] = float(iterations.mean())
            scalars["solver/iterations_max"] = float(iterations.max())
            scalars["solver/unconverged_fraction"] = float((~converged).double().mean())
        scalars["train/lr"] = self.optimizer.param_groups[0]["lr"]
        return scalars

    def _state(self) -> dict[str, Any]:
        warm = getattr(self.objective, "warm_starts", None)
        return {
            "epoch": self.epoch,
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": capture_rng(),
            "best": dict(self.best),
            "last_train_loss": self.last_train_loss,
            "warm_starts": None if warm is None else warm.buffers,
            "config": self.config.to_dict(),
        }

    def resume(self) -> bool:
        """Load ``checkpoints/last.pt`` if there is one; True if it was loaded."""
        if not self.checkpoint_path.is_file():
            return False
        state = load_checkpoint(self.checkpoint_path)
        saved, current = dict(state["config"]), self.config.to_dict()
        for key in ("model", "data", "system"):
            if saved[key] != current[key]:
                raise ValueError(
                    f"{self.checkpoint_path}: saved with a different '{key}' config; use a new "
                    "output_dir or `mpc-policy train --restart`"
                )
        self.learner.load_state_dict(state["model"])
        restore_optimizer(
            self.optimizer,
            self.scheduler,
            state,
            current,
            self.apply_new_settings,
            str(self.checkpoint_path),
        )
        self.shuffle.set_state(state["shuffle"])
        restore_rng(state["rng"])
        self.best = dict(state["best"])
        self.epoch = int(state["epoch"])
        self.last_train_loss = float(state["last_train_loss"])
        warm = getattr(self.objective, "warm_starts", None)
        if warm is not None and state["warm_starts"] is not None:
            warm.buffers = {k: v.clone() for k, v in state["warm_starts"].items()}
        return True

    def _end_epoch(self, log: TrainingLog, scalars: dict[str, float]) -> None:
        for split in ("val", "test"):
            scalars[f"loss/{split}"] = self.evaluate(split)
            check_loss(self.epoch, scalars[f"loss/{split}"], f"{split} loss")
        if scalars["loss/val"] < self.best["val"]:
            self.best = {
                "epoch": self.epoch,
                "val": scalars["loss/val"],
                "test": scalars["loss/test"],
            }
            save_checkpoint(
                self.best_path,
                {
                    "epoch": self.epoch,
                    "model": self.learner.state_dict(),
                    "best": dict(self.best),
                    "config": self.config.to_dict(),
                },
            )
        scalars["loss/test_at_best_val"] = self.best["test"]
        scalars.update(
            {f"model_error/{k}": v for k, v in model_errors(self.learner, self.config).items()}
        )
        scalars.update({f"params/{k}": v for k, v in parameter_values(self.learner).items()})
        self.last_train_loss = scalars.get("loss/train", self.last_train_loss)
        log.scalars(self.epoch, scalars)
        save_checkpoint(self.checkpoint_path, self._state())
        log.epoch_done(self.epoch, {"train": self.last_train_loss, "val": scalars["loss/val"]})

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train up to ``train.epochs`` epochs (resuming first if a checkpoint exists).

        Args:
            stop_after: stop after this many epochs in this call (an interruption that
                leaves a checkpoint; the next call resumes).
        """
        self.resume()
        total = self.config.train.epochs
        with TrainingLog(
            self.run_dir / "tensorboard",
            self.epoch + (self.best["epoch"] >= 0),
            total,
            self.config.train.progress,
        ) as log:
            if self.best["epoch"] < 0:  # a fresh run: log the starting point as epoch 0
                with summarize_warnings("epoch 0 (before training): "):
                    self._end_epoch(log, {"loss/train": self.evaluate("train")})
            done_here = 0
            while self.epoch < total and (stop_after is None or done_here < stop_after):
                self.epoch += 1
                with summarize_warnings(f"epoch {self.epoch}: "):
                    scalars = self._train_epoch(self.epoch)
                    self._end_epoch(log, scalars)
                done_here += 1
        return TrainResult(
            epochs_done=self.epoch,
            best_epoch=int(self.best["epoch"]),
            best_val_loss=float(self.best["val"]),
            test_loss_at_best_val=float(self.best["test"]),
            last_train_loss=self.last_train_loss,
            checkpoint=str(self.checkpoint_path),
            best_checkpoint=str(self.best_path),
            log_dir=str(self.run_dir / "tensorboard"),
        )
