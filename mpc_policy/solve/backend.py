"""Which implementation runs the solver's numerics: compiled CPU kernels or torch.

The numerics that never call user code (the Riccati recursion with its box QPs, the
factorization with a fixed free set, the implicit backward LQR, the costates and the rollout
of affine dynamics) exist twice with the same signatures: as torch functions
(``mpc_policy.numerics.riccati``, ``mpc_policy.numerics.adjoint``; any device, differentiable,
the reference) and as numba kernels (``mpc_policy.numerics.compiled``; CPU, one compiled loop
per call instead of a few tensor operations per time step).

The choice is the solver option ``backend`` ("auto", "compiled" or "torch"). "auto" reads the
environment variable ``MPC_POLICY_BACKEND`` (same three values) and otherwise takes the
compiled kernels for CPU tensors when numba is installed, torch elsewhere. Solves that need a
graph through these numerics (``grad_method="unroll"``, double backward) always run torch.
The backend that ran is reported in ``SolverInfo.backend``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from typing import Any, NamedTuple, get_args

import torch

from mpc_policy.numerics import adjoint, riccati
from mpc_policy.options import Backend

__all__ = ["ENVIRONMENT_VARIABLE", "TORCH", "Backend", "Kernels", "compiled_available", "select"]

ENVIRONMENT_VARIABLE = "MPC_POLICY_BACKEND"


class Kernels(NamedTuple):
    """One implementation of the solver's numerics.

    Attributes:
        name: "compiled" or "torch".
        backward_recursion: as ``mpc_policy.numerics.riccati.backward_recursion``.
        factorize: as ``mpc_policy.numerics.riccati.factorize``.
        adjoint_solve: as ``mpc_policy.numerics.adjoint.adjoint_solve``.
        costates_from_gradient: as ``mpc_policy.numerics.adjoint.costates_from_gradient``.
        implicit_gradients: as ``mpc_policy.numerics.adjoint.implicit_gradients``.
        affine_rollout: as ``mpc_policy.numerics.compiled.rollout.affine_rollout``, or None (torch
            rolls affine dynamics out step by step like any model).
        box_lqr: as ``mpc_policy.numerics.compiled.box_lqr.solve_box_lqr`` (the whole box-DDP loop
            of a bounded LQR problem), or None (``box_ddp`` runs it).
    """

    name: str
    backward_recursion: Callable[..., riccati.Gains]
    factorize: Callable[..., riccati.Gains]
    adjoint_solve: Callable[..., torch.Tensor]
    costates_from_gradient: Callable[..., torch.Tensor]
    implicit_gradients: Callable[..., adjoint.ImplicitGradients]
    affine_rollout: Callable[..., Any] | None
    box_lqr: Callable[..., Any] | None = None


TORCH = Kernels(
    "torch",
    riccati.backward_recursion,
    riccati.factorize,
    adjoint.adjoint_solve,
    adjoint.costates_from_gradient,
    adjoint.implicit_gradients,
    None,
)


@functools.cache
def _compiled() -> Kernels | None:
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from mpc_policy.numerics.compiled import adjoint as compiled_adjoint
        from mpc_policy.numerics.compiled import box_lqr as compiled_box_lqr
        from mpc_policy.numerics.compiled import riccati as compiled_riccati
        from mpc_policy.numerics.compiled import rollout as compiled_rollout
    except ImportError:  # a numba that does not import (e.g. a numpy it does not support)
        return None
    return Kernels(
        "compiled",
        compiled_riccati.backward_recursion,
        compiled_riccati.factorize,
        compiled_adjoint.adjoint_solve,
        compiled_adjoint.costates_from_gradient,
        compiled_adjoint.implicit_gradients,
        compiled_rollout.affine_rollout,
        compiled_box_lqr.solve_box_lqr,
    )


def compiled_available() -> bool:
    """Whether the compiled kernels can run here (numba importable)."""
    return _compiled() is not None


_CHOICES = get_args(Backend)


def _requested(choice: str) -> str:
    if choice not in _CHOICES:
        raise ValueError(f"backend: expected one of {_CHOICES}, received {choice!r}")
    if choice != "auto":
        return choice
    value = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"environment variable {ENVIRONMENT_VARIABLE}: expected one of "
            f"{_CHOICES}, received {value!r}"
        )
    return value


def select(choice: str, device: torch.device, *, needs_graph: bool = False) -> Kernels:
    """The kernels a solve runs.

    Args:
        choice: the ``backend`` option: "auto", "compiled" or "torch".
        device: device of the problem data.
        needs_graph: whether autograd must see through the numerics (torch then runs).

    Raises:
        ValueError: "compiled" asked for CUDA (or other non-CPU) tensors.
        RuntimeError: "compiled" asked for where numba is not installed.
    """
    requested = _requested(choice)
    if needs_graph or requested == "torch":
        return TORCH
    compiled = _compiled()
    if requested == "compiled":
        if device.type != "cpu":
            raise ValueError(
                f"backend: 'compiled' runs on CPU tensors, received tensors on {device}; "
                "use backend='auto' or 'torch'"
            )
        if compiled is None:
            raise RuntimeError(
                "backend: 'compiled' needs numba, which is not importable here; "
                "`pip install numba` or use backend='auto' or 'torch'"
            )
        return compiled
    if device.type == "cpu" and compiled is not None:
        return compiled
    return TORCH
