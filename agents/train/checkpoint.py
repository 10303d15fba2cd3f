"""Checkpoints that survive an interruption: atomic writes and the full training state.

A checkpoint is a dict of tensors and plain Python values (loadable with
``torch.load(weights_only=True)``), written atomically (``mpc_policy.agents.data.atomic``), so a
run killed at any moment leaves either the previous checkpoint or the new one, never a torn
file. The random number generators
(Python, numpy, torch) are saved and restored with it, so a resumed run draws the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.atomic import atomic_write
from .guards import restore_optimizer

__all__ = [
    "RunCheckpoints",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]


def capture_rng() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators."""
    # numpy's legacy global generator is what code without its own Generator draws from
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore generators saved by ``capture_rng``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            saved["kind"],
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached"],
        )
    )
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (``mpc_policy.agents.data.atomic``)."""
    return atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain values only)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"checkpoint: expected a checkpoint file, received the folder {str(path)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle and zip errors alike: an unreadable file
        raise ValueError(f"checkpoint {path}: unreadable ({error})") from error


class RunCheckpoints:
    """The checkpoints of one run: ``last.pt`` (resumable) and ``best.pt`` under a folder,
    each stamped with the run's identity (its resolved configuration).

    Args:
        folder: where the files go.
        identity: the run's resolved configuration as plain values; saved as "config".
        must_match: the keys of ``identity`` that a resumed checkpoint must share.
        apply_new_settings: resume even with changed optimizer or scheduler settings.
    """

    def __init__(
        self,
        folder: str | Path,
        identity: dict[str, Any],
        must_match: Sequence[str] = (),
        apply_new_settings: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.identity = identity
        self.must_match = tuple(must_match)
        self.apply_new_settings = apply_new_settings

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def save_last(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.last, {**state, "config": self.identity})

    def save_best(self, state: dict[str, Any]) -> Path:
        return save_checkpoint(self.best, {**state, "config": self.identity})

    def load_last(self) -> dict[str, Any] | None:
        """The latest state, or None if there is none.

        Raises:
            ValueError: it was saved by a run with different ``must_match`` settings.
        """
        if not self.last.is_file():
            return None
        state = load_checkpoint(self.last)
        saved = dict(state["config"])
        for key in self.must_match:
            if saved.get(key) != self.identity.get(key):
                raise ValueError(
                    f"{self.last}: saved with a different '{key}' config; use a new "
                    "output_dir or `mpc-policy train --restart`"
                )
        return state

    def restore_optimizer(
        self, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]
    ) -> None:
        """Load a state's optimizer and scheduler (``guards.restore_optimizer``)."""
        restore_optimizer(
            optimizer, scheduler, state, self.identity, self.apply_new_settings, str(self.last)
        )
