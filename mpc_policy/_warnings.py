"""Warnings that point at the user's line, not at the solver's internals.

A warning raised anywhere in the solver (``numerics``, ``problem``, ``solve``, ``grad``, the
public layers, ``compat``) names the first frame outside the solver and torch: the user's
``mpc(x_init, cost, dynamics)`` or ``policy(obs)``. The SB3 adapters (``mpc_policy.sb3``) and the
environments and agents (outside this folder) count as user code: they call the solver for a
user.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import torch
from torch import Tensor

__all__ = ["user_stacklevel", "warn", "warn_regularized"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_USER_FACING = (os.path.join(_PACKAGE, "sb3") + os.sep,)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _is_solver_frame(filename: str) -> bool:
    return (
        filename.startswith(_PACKAGE) and not filename.startswith(_USER_FACING)
    ) or filename.startswith(_TORCH_DIR)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at
    the first frame outside the solver's modules and torch: the user's call
    (``policy(obs)``, ``mpc(x_init, cost, dynamics)``), not torch's ``module.py``."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and _is_solver_frame(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` pointed at the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel())


def warn_regularized(shift: Tensor, mask: Tensor | None) -> None:
    """Warn about the steps whose Q_uu needed a diagonal shift, latest time step first, each
    warning pointed at the user's line. The numerics report the shifts (``Gains.shift``);
    the layers above decide which are worth a warning.

    Args:
        shift: (T, B) the shift each step and element needed (0 where none).
        mask: (B,) the elements worth a warning, or None for all.
    """
    needed = shift > 0
    if mask is not None:
        needed = needed & mask.view(1, -1)
    if not bool(needed.any()):
        return
    for t in range(shift.shape[0] - 1, -1, -1):
        reported = torch.nonzero(needed[t]).flatten().tolist()
        if reported:
            warnings.warn(
                f"Q_uu at time step {t + 1} is not positive definite for batch elements "
                f"{reported[:10]}; regularized by adding up to "
                f"{float(shift[t].max()):.2e} * I",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
