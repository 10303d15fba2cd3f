"""Training metrics: the sink a trainer writes to, tensorboard scalars per epoch with a tqdm
progress bar, and warnings summarized per epoch.

Every trainer writes, at step = epoch (0 is the model before training):

    loss/train, loss/val, loss/test      imitation loss E ||u_1:T(x; theta) - u_1:T(x; th*)||^2
                                         (mean squared error per control entry, th* the
                                         expert's parameters)
    loss/test_at_best_val                the reported figure, so far
    loss/sysid_train                     next-state MSE (sysid only)
    loss/test_sysid                      next-state MSE of the learned dynamics on the test
                                         trajectories (dynamics learners)
    model_error/<name>                   distances to the true parameters (where known)
    params/<group>/<name>                each learned physical parameter and cost entry
                                         (params/dynamics/mass, params/cost/weight_<i>)
    solver/iterations_mean, solver/iterations_max, solver/unconverged_fraction, solver/solves
    train/lr

The ``params/...`` and ``solver/...`` tags are one scheme with SB3 runs
(``mpc_policy.sb3.MPCHealthCallback``, which adds ``solver/solve_time_*`` and
``solver/rollout/...`` for acting): the same name means the same statistic.

Every run (re)opens its folder with ``purge_step`` = the first epoch it will write, so
events that a killed run wrote after its last checkpoint are discarded, not duplicated.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

__all__ = ["MetricsSink", "TrainingLog", "summarize_warnings"]


def _wait_for_a_new_second(log_dir: Path) -> None:
    """Make the next event file's name sort after the folder's existing ones.

    Tensorboard reads a run's event files in name order, and the name begins with the
    creation time in whole seconds followed by a process-wide counter that does not sort as
    a number (".10" before ".9"): a writer opened within the same second as the last one
    (a quick resume) could be read first, and its purge step would then hide its own epochs.
    """
    stamps = [
        int(match.group(1))
        for path in log_dir.glob("events.out.tfevents.*")
        if (match := re.match(r"events\.out\.tfevents\.(\d+)\.", path.name))
    ]
    if stamps:
        remaining = max(stamps) + 1 - time.time()
        if remaining > 0:
            time.sleep(remaining)


class MetricsSink(Protocol):
    """Where a trainer's per-epoch scalars go."""

    def start(self, first_epoch: int, total_epochs: int) -> None:
        """Open for epochs ``first_epoch``..``total_epochs`` (> 0 when resuming)."""

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """Record ``{tag: value}`` at step ``epoch``."""

    def epoch_done(self, epoch: int, summary: dict[str, float]) -> None:
        """The epoch's scalars are complete; ``summary`` for a progress display."""

    def close(self) -> None:
        """Flush and release."""


class TrainingLog:
    """A tensorboard writer and an epoch progress bar (a ``MetricsSink``).

    Args:
        log_dir: the tensorboard run folder.
        progress: show the progress bar.
    """

    def __init__(self, log_dir: str | Path, progress: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.progress = progress
        self.writer: SummaryWriter | None = None
        self.bar: tqdm | None = None

    def start(self, first_epoch: int, total_epochs: int) -> None:
        _wait_for_a_new_second(self.log_dir)
        # purge_step: hide events at or after the first epoch we write, left by a run
        # that was killed before it could checkpoint them
        self.writer = SummaryWriter(str(self.log_dir), purge_step=first_epoch)
        self.bar = tqdm(
            total=total_epochs,
            initial=max(first_epoch - 1, 0),
            desc="train",
            unit="epoch",
            disable=not self.progress,
            dynamic_ncols=True,
        )

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """Write ``{tag: value}`` at step ``epoch``."""
        assert self.writer is not None, "start() first"
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), global_step=epoch)

    def epoch_done(self, epoch: int, summary: dict[str, float]) -> None:
        """Flush the epoch's scalars and advance the bar with a short summary."""
        assert self.writer is not None and self.bar is not None, "start() first"
        self.writer.flush()
        if epoch > 0:
            self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in summary.items()}, refresh=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


_AGENTS_DIR = os.path.dirname(os.path.abspath(__file__))
_CONTEXTLIB = os.path.abspath(contextlib.__file__)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a ``warnings.warn`` here that points at the first frame
    outside the learning code (and contextlib): the user's call, e.g. ``pipeline.train``."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_AGENTS_DIR + os.sep) or path == _CONTEXTLIB):
            break
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


@contextmanager
def summarize_warnings(context: str = "") -> Iterator[None]:
    """Collect the warnings raised inside (e.g. one per unconverged solve of an epoch) and
    re-issue each kind once, with its count and ``context`` as a prefix, pointing at the
    user's call: nothing is hidden, nothing repeats."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            caught = list(records)
    kinds: dict[tuple[type[Warning], str], list[str]] = {}
    for w in caught:
        # "3 of 32 batch elements did not ..." and "1 of 32 ..." are one kind
        head = re.sub(r"\d+", "#", str(w.message).split(":")[0])
        kinds.setdefault((w.category, head), []).append(str(w.message))
    level = _user_stacklevel()
    for (category, _), messages in kinds.items():
        more = f" [the first of {len(messages)} such warnings]" if len(messages) > 1 else ""
        warnings.warn(context + messages[0] + more, category, stacklevel=level)
