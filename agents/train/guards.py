"""Guards of a training run: finite losses and parameters, resume settings, one run per folder.

- A non-finite loss, gradient-step result or parameter stops training with a
  ``TrainingDiverged`` naming the epoch and the parameter; nothing of that epoch is saved.
- A resumed run compares the optimizer and scheduler settings saved in its checkpoint with
  the current ones (``RESUME_SETTINGS``): a change is refused unless explicitly applied.
- ``RunLock`` holds ``<run folder>/.lock`` (pid and host) while a run trains there; a second
  run is refused, and a lock whose process is gone (killed, crashed) is taken over.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.solution import SolverInfo

__all__ = [
    "RESUME_SETTINGS",
    "RunLock",
    "RunLocked",
    "TrainingDiverged",
    "changed_settings",
    "check_loss",
    "check_parameters",
    "restore_optimizer",
]

# the ``train`` keys that shape the optimizer's and scheduler's state
# (``epochs`` may change: a resumed run is extended or shortened, its cosine schedule
# stretched to the new end)
RESUME_SETTINGS = ("optimizer", "lr", "alpha", "scheduler", "batch_size")


class TrainingDiverged(ValueError):
    """A loss or a parameter became NaN or Inf during training."""


class RunLocked(ValueError):
    """The run folder is in use by another live process."""


def check_loss(epoch: int, loss: Tensor | float, what: str, info: SolverInfo | None = None) -> None:
    """A loss must be finite; else ``TrainingDiverged`` naming the epoch.

    Args:
        epoch: the epoch (0: before training).
        loss: the scalar loss.
        what: what it is, e.g. "training loss of batch 3".
        info: the solver's report of the batch, if any (its NONFINITE rows are named).
    """
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    if not math.isfinite(value):
        cause = ""
        if info is not None and bool(info.nonfinite.any()):
            rows = torch.nonzero(info.nonfinite).flatten().tolist()
            cause = f" (the MPC solve of rows {rows[:10]} of the batch became NONFINITE)"
        raise TrainingDiverged(
            f"epoch {epoch}: the {what} is {value}{cause}; training stopped and nothing of "
            "this epoch is saved (lower train.lr, or check the data, the model's initial "
            "parameters and the solver's report)"
        )


def check_parameters(epoch: int, module: nn.Module, after: str) -> None:
    """Every parameter of ``module`` must be finite; else ``TrainingDiverged`` naming it."""
    for name, parameter in module.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise TrainingDiverged(
                f"epoch {epoch}: parameter {name!r} became non-finite {after}; training "
                "stopped and nothing of this epoch is saved (lower train.lr)"
            )


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The ``train`` settings of ``RESUME_SETTINGS`` that differ, as 'key: old -> new'."""
    old, new = saved.get("train", {}), current.get("train", {})
    return [
        f"train.{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in RESUME_SETTINGS
        if old.get(key) != new.get(key)
    ]


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    current: dict[str, Any],
    apply_new_settings: bool,
    where: str,
) -> None:
    """Load a checkpoint's optimizer and scheduler state into fresh ones built from the
    current config, refusing changed ``RESUME_SETTINGS`` unless ``apply_new_settings``.

    Applied changes: the new lr and alpha replace the saved ones (under an unchanged
    schedule the new lr scales the scheduled one); a new optimizer kind starts with a fresh
    state; a changed schedule (scheduler, batch size) starts a fresh scheduler. A changed
    number of epochs needs no flag: the resumed schedule keeps its step and takes the new
    length (``T_max``).

    Raises:
        ValueError: settings changed and ``apply_new_settings`` is False.
    """
    saved = dict(state["config"])
    changed = changed_settings(saved, current)
    if changed and not apply_new_settings:
        raise ValueError(
            f"{where}: resuming with changed optimizer or scheduler settings "
            f"({'; '.join(changed)}); pass --apply-new-settings to apply them to the resumed "
            "run, or --restart to start over"
        )
    old, new = saved.get("train", {}), current.get("train", {})
    fresh = {k: v for k, v in optimizer.param_groups[0].items() if k in ("lr", "alpha")}
    same_schedule = all(old.get(k) == new.get(k) for k in ("scheduler", "batch_size"))
    resume_schedule = scheduler is not None and state["scheduler"] is not None and same_schedule
    if old.get("optimizer") == new.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    if resume_schedule:
        length = getattr(scheduler, "T_max", None)  # from the current number of epochs
        scheduler.load_state_dict(state["scheduler"])
        if length is not None:
            scheduler.T_max = length
    if not changed:
        return
    for group in optimizer.param_groups:
        if "alpha" in fresh:
            group["alpha"] = fresh["alpha"]
        base = group.get("initial_lr", group["lr"])
        # under the same schedule the new lr scales the scheduled one; else it starts afresh
        group["lr"] = group["lr"] * fresh["lr"] / base if resume_schedule else fresh["lr"]
        if "initial_lr" in group:
            group["initial_lr"] = fresh["lr"]
    if scheduler is not None:
        scheduler.base_lrs = [fresh["lr"] for _ in scheduler.base_lrs]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """Exclusive use of a run folder by one live process, as a context manager.

    Args:
        folder: the run folder (created if needed).
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def acquire(self) -> None:
        """Take the lock, or raise ``RunLocked`` naming the live process holding it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                pid = int(owner["pid"]) if owner and isinstance(owner.get("pid"), int) else -1
                same_host = owner is not None and owner.get("host") == me["host"]
                if pid == me["pid"] and same_host:
                    return  # this process holds it already (re-entrant)
                if pid > 0 and (_alive(pid) or not same_host):
                    raise RunLocked(
                        f"output folder {self.path.parent} is in use by another run (pid "
                        f"{pid} on {owner.get('host') if owner else '?'}); wait for it to "
                        "finish or set output_dir to another folder"
                    ) from None
                self.path.unlink(missing_ok=True)  # its process is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as file:
                json.dump(me, file)
            self.held = True
            return
        raise RunLocked(f"output folder {self.path.parent}: could not take the lock {self.path}")

    def release(self) -> None:
        """Give the lock back (only if this object took it)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
