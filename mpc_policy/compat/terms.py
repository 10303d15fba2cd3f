"""The problem terms of mpc.pytorch 0.0.6: ``QuadCost``, ``LinDx`` and ``GradMethods``.

A ``QuadCost`` is the per-step cost 1/2 tau_t' C_t tau_t + c_t' tau_t with tau_t = [x_t; u_t],
a ``LinDx`` the affine dynamics x_{t+1} = F_t tau_t + f_t, both time-major ([T, B, ...]).
They live in their own leaf module so that ``mpc``, ``util`` and ``lqr_step`` can all name
them without importing one another (mpc.pytorch imports them inside its functions).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from torch import Tensor

__all__ = ["GradMethods", "LinDx", "QuadCost"]


class QuadCost(NamedTuple):
    """Quadratic cost 1/2 tau_t' C_t tau_t + c_t' tau_t, tau_t = [x_t; u_t].

    C: [T, B, n+m, n+m], [T, n+m, n+m] or [n+m, n+m]; c: [T, B, n+m], [T, n+m], [n+m] or None.
    """

    C: Tensor | None = None
    c: Tensor | None = None


class LinDx(NamedTuple):
    """Affine dynamics x_{t+1} = F_t tau_t + f_t.

    F: [T-1, B, n, n+m] (a T-th step is ignored), [T-1, n, n+m] or [n, n+m];
    f: [T-1, B, n], [T-1, n], [n] or None.
    """

    F: Tensor | None = None
    f: Tensor | None = None


class GradMethods(Enum):
    """How a dynamics module is linearized (mpc.pytorch's names)."""

    AUTO_DIFF = 1
    FINITE_DIFF = 2
    ANALYTIC = 3
    ANALYTIC_CHECK = 4
