"""Behaviour cloning of an MPC expert on whole nominal action sequences (paper, section 5.3).

The learner minimizes the imitation loss

    L(theta) = E_x || u_{1:T}(x; theta) - u_{1:T}(x; theta_expert) ||^2

(as the mean squared error per control entry) over the training trajectories, with
minibatches, for any subset of its parameters. Each epoch it evaluates the loss on the
validation and test trajectories; the reported figure is the test loss at the epoch of the
best validation loss. The ``Trainer`` is given an objective (what is predicted and
minimized), an ``Optimization`` (optimizer, schedule, parameter groups) and a metrics sink;
the curves come back in memory in the ``TrainResult``. With ``RunCheckpoints`` every
evaluated epoch (``Loop.eval_every``) and the last of a call end with an atomic checkpoint
(model, optimizer, scheduler, epoch, random generators, the objective's state, best so far,
curves), from which an interrupted run resumes as if it had not stopped. ``Loop.patience``
ends a run early once the validation loss has stopped improving.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.solution import SolverInfo

from .checkpoint import RunCheckpoints, capture_rng, restore_rng
from .guards import check_loss, check_parameters
from .logging import MetricsSink, summarize_warnings
from .objectives import Batch, Objective
from .optimization import Optimization

__all__ = ["Loop", "MetricsSink", "Objective", "TrainResult", "Trainer"]

EVAL_CHUNK = 256
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Loop:
    """The training loop's own settings.

    Attributes:
        epochs: the most epochs in all.
        batch_size: minibatch size.
        seed: the shuffling seed.
        eval_every: evaluate (validation and test loss, best checkpoint, curves) every this
            many epochs, and after the last one.
        patience: stop early once this many epochs have passed since the validation loss
            of the objective (``Objective.monitor``: the imitation loss, or the transition
            loss of sysid) last improved by more than ``min_delta`` (relative) on its best
            value; None trains all ``epochs``.
        min_delta: the relative improvement that counts for ``patience`` (0.01: 1 %).
        lr_drops: the first this many times ``patience`` runs out, the learning rate is
            multiplied by ``lr_drop_factor`` and the run goes on (patience restarts); the
            next time it stops the run.
        lr_drop_factor: the factor of each drop, in (0, 1).
    """

    epochs: int
    batch_size: int
    seed: int = 0
    eval_every: int = 1
    patience: int | None = None
    min_delta: float = 0.0
    lr_drops: int = 0
    lr_drop_factor: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(
                f"patience: expected None or an integer >= 1, received {self.patience}"
            )
        if not 0 <= self.min_delta < 1:
            raise ValueError(f"min_delta: expected a float in [0, 1), received {self.min_delta}")
        if self.lr_drops < 0:
            raise ValueError(f"lr_drops: expected an integer >= 0, received {self.lr_drops}")
        if not 0 < self.lr_drop_factor < 1:
            raise ValueError(
                f"lr_drop_factor: expected a float in (0, 1), received {self.lr_drop_factor}"
            )


@dataclass
class TrainResult:
    """Summary of a training run (all epochs so far, across resumptions).

    ``curves[tag][epoch]`` holds every logged scalar (epoch 0: before training), in
    float64; it is left out of ``to_dict``. ``identifiable[name]`` = [learned, true or
    None] for the identifiable combinations of a learned model's parameters.
    """

    epochs_done: int
    best_epoch: int
    best_val_loss: float
    test_loss_at_best_val: float
    last_train_loss: float
    checkpoint: str | None
    best_checkpoint: str | None
    stopped_early: bool = False
    curves: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)
    identifiable: dict[str, list[float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        del values["curves"]
        return values


class Trainer:
    """Minibatch training with per-epoch evaluation, metrics and checkpoints.

    Args:
        objective: what the learner predicts and minimizes (``objective.learner``).
        optimization: the optimizer over the learned parameter groups.
        sink: where each epoch's scalars go (tensorboard and a progress bar, or nothing).
        splits: "train", "val", "test" tensors: x (N, n) start states, u (N, T, m) expert
            nominal actions, x_plan (N, T, n) the expert's planned states.
        loop: epochs, batch size, shuffling seed.
        checkpoints: where to checkpoint and resume from; None keeps nothing on disk.
    """

    def __init__(
        self,
        objective: Objective,
        optimization: Optimization,
        sink: MetricsSink,
        splits: dict[str, dict[str, Tensor]],
        loop: Loop,
        checkpoints: RunCheckpoints | None = None,
    ) -> None:
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"splits: expected {list(SPLITS)}, missing {missing}")
        self.objective, self.optimization, self.sink = objective, optimization, sink
        self.learner: nn.Module = objective.learner
        self.splits, self.loop, self.checkpoints = splits, loop, checkpoints
        self.shuffle = torch.Generator().manual_seed(loop.seed)
        self.epoch = 0
        self.best = {"epoch": -1, "val": float("inf"), "test": float("inf")}
        # the last improvement by more than loop.min_delta, for loop.patience
        self.improved = {"epoch": -1, "val": float("inf")}
        self.lr_drops = 0  # drops of the learning rate on patience so far
        self.last_train_loss = float("nan")
        self.curves: dict[str, dict[int, float]] = {}

    def _batch(self, split: str, rows: Tensor) -> Batch:
        data = self.splits[split]
        return Batch(split, rows, data["x"][rows], data["u"][rows], data["x_plan"][rows])

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
        self.objective.start_epoch(epoch)
        order = torch.randperm(self.splits["train"]["x"].shape[0], generator=self.shuffle)
        sums: Counter[str] = Counter()
        infos: list[SolverInfo] = []
        n_batches = 0
        for start in range(0, order.numel(), self.loop.batch_size):
            batch = self._batch("train", order[start : start + self.loop.batch_size])
            loss, logs, info = self.objective.train_loss(batch)
            check_loss(epoch, loss, f"training loss of batch {n_batches + 1}", info)
            self.optimization.zero_grad()
            loss.backward()
            self.optimization.step(epoch)
            check_parameters(epoch, self.learner, f"in the optimizer step of batch {n_batches + 1}")
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
            scalars["solver/solves"] = float(iterations.numel())  # elements solved, as SB3's
        scalars["train/lr"] = self.optimization.lr
        return scalars

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.learner.state_dict(),
            **self.optimization.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": capture_rng(),
            "best": dict(self.best),
            "improved": dict(self.improved),
            "lr_drops": self.lr_drops,
            "last_train_loss": self.last_train_loss,
            "objective": self.objective.state_dict(),
            "curves": {tag: dict(values) for tag, values in self.curves.items()},
        }

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; True if it was loaded."""
        state = None if self.checkpoints is None else self.checkpoints.load_last()
        if state is None or self.checkpoints is None:
            return False
        self.learner.load_state_dict(state["model"])
        optimization = self.optimization
        self.checkpoints.restore_optimizer(optimization.optimizer, optimization.scheduler, state)
        self.shuffle.set_state(state["shuffle"])
        restore_rng(state["rng"])
        self.best = dict(state["best"])
        self.improved = dict(
            state.get("improved", {"epoch": self.best["epoch"], "val": self.best["val"]})
        )
        self.lr_drops = int(state.get("lr_drops", 0))
        self.epoch = int(state["epoch"])
        self.last_train_loss = float(state["last_train_loss"])
        # a checkpoint of an earlier version kept the warm starts alone and no curves
        objective = state.get("objective", {"warm_starts": state.get("warm_starts")})
        self.objective.load_state_dict(objective)
        self.curves = {
            tag: {e: v for e, v in values.items() if e <= self.epoch}
            for tag, values in state.get("curves", {}).items()
        }
        return True

    def _evaluates(self) -> bool:
        """Whether this epoch is evaluated: epoch 0, every ``eval_every``-th, and one that
        would be the last (``epochs`` reached or ``patience`` over)."""
        return (
            self.epoch % self.loop.eval_every == 0
            or self.epoch >= self.loop.epochs
            or self._patience_over()
        )

    def _patience_over(self) -> bool:
        patience = self.loop.patience
        return patience is not None and self.epoch - self.improved["epoch"] >= patience

    def _end_epoch(self, scalars: dict[str, float], checkpoint: bool = False) -> None:
        """Log the epoch; evaluate it (``_evaluates``) and then checkpoint it, or
        checkpoint it anyway when ``checkpoint`` (the last epoch of a call)."""
        summary = {}
        evaluated = self._evaluates()
        if evaluated:
            self._evaluate_epoch(scalars)
            summary["val"] = scalars["loss/val"]
        self.last_train_loss = scalars.get("loss/train", self.last_train_loss)
        for tag, value in scalars.items():
            self.curves.setdefault(tag, {})[self.epoch] = float(value)
        self.sink.scalars(self.epoch, scalars)
        if self.checkpoints is not None and (evaluated or checkpoint):
            self.checkpoints.save_last(self._state())
        self.sink.epoch_done(self.epoch, {"train": self.last_train_loss, **summary})

    def _evaluate_epoch(self, scalars: dict[str, float]) -> None:
        """Add the validation and test losses (and the objective's diagnostics) to the
        epoch's scalars; keep the best model and the last improvement."""
        for split in ("val", "test"):
            scalars[f"loss/{split}"] = self.evaluate(split)
            check_loss(self.epoch, scalars[f"loss/{split}"], f"{split} loss")
        if scalars["loss/val"] < self.best["val"]:
            self.best = {
                "epoch": self.epoch,
                "val": scalars["loss/val"],
                "test": scalars["loss/test"],
            }
            if self.checkpoints is not None:
                self.checkpoints.save_best(
                    {"epoch": self.epoch, "model": self.learner.state_dict(), "best": self.best}
                )
        scalars["loss/test_at_best_val"] = self.best["test"]
        scalars.update(self.objective.diagnostics())
        monitored = scalars[self.objective.monitor]
        if monitored < self.improved["val"] * (1.0 - self.loop.min_delta):
            self.improved = {"epoch": self.epoch, "val": monitored}
        if self._patience_over() and self.lr_drops < self.loop.lr_drops:
            # a plateau at this learning rate: go on at a smaller one, with patience anew
            self.optimization.scale_lr(self.loop.lr_drop_factor)
            self.lr_drops += 1
            self.improved = {"epoch": self.epoch, "val": self.improved["val"]}

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train up to ``loop.epochs`` epochs (resuming first if a checkpoint exists), or
        until ``loop.patience`` ends the run.

        Args:
            stop_after: stop after this many epochs in this call (an interruption that
                leaves a checkpoint; the next call resumes).
        """
        self.resume()
        total = self.loop.epochs
        self.sink.start(self.epoch + (self.best["epoch"] >= 0), total)
        try:
            if self.best["epoch"] < 0:  # a fresh run: log the starting point as epoch 0
                with summarize_warnings("epoch 0 (before training): "):
                    self._end_epoch({"loss/train": self.evaluate("train")})
            done_here = 0
            while (
                self.epoch < total
                and not self._patience_over()
                and (stop_after is None or done_here < stop_after)
            ):
                self.epoch += 1
                with summarize_warnings(f"epoch {self.epoch}: "):
                    scalars = self._train_epoch(self.epoch)
                    done_here += 1
                    self._end_epoch(scalars, checkpoint=done_here == stop_after)
        finally:
            self.sink.close()
        checkpoints = self.checkpoints
        return TrainResult(
            epochs_done=self.epoch,
            best_epoch=int(self.best["epoch"]),
            best_val_loss=float(self.best["val"]),
            test_loss_at_best_val=float(self.best["test"]),
            last_train_loss=self.last_train_loss,
            checkpoint=None if checkpoints is None else str(checkpoints.last),
            best_checkpoint=None if checkpoints is None else str(checkpoints.best),
            stopped_early=self.epoch < total and self._patience_over(),
            curves={tag: dict(values) for tag, values in self.curves.items()},
        )
