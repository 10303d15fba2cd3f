"""Solver options: one frozen dataclass shared by ``lqr_solve`` and ``MPC``.

Choices are ``Literal`` strings validated at construction, so a typo fails where it is made,
not deep inside a solve.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch
from torch import Tensor

__all__ = ["Backend", "GradMethod", "JacobianMethod", "MPCOptions", "OnUnconverged"]

Backend = Literal["auto", "compiled", "torch"]
GradMethod = Literal["exact", "paper", "unroll"]
JacobianMethod = Literal["autograd", "analytic", "finite_diff"]
OnUnconverged = Literal["warn", "raise", "zero_grad", "ignore"]
DoubleBackward = Literal["refuse", "first_order"]

# The tuned constants of every box-DDP loop (torch: solve/ddp.py, solve/newton.py; compiled:
# numerics/compiled/box_lqr.py, numerics/compiled/ddp.py), written once.
# A step whose cost exceeds the last by less than this many machine epsilons of the cost's
# size, eps (1 + |cost|), is below the rounding of the cost and not refused.
COST_ROUNDING = 10.0
# Newton steps (one more call of the model's curvature per step) pay where Gauss-Newton
# would take many more steps: an element takes them once its last step's contraction of the
# residual, kept up, would need more than this many steps to reach the tolerance (a
# swing-up pendulum with a heavy torque weight: rate 0.5, 15 steps in float64; the paper's
# pendulum in float32: rate 0.1 to 0.2, 2 to 4 steps; a Newton step costs about 1.4
# Gauss-Newton steps there).
NEWTON_STEPS_LEFT = 5.0


@dataclass(frozen=True)
class MPCOptions:
    """Settings of the box-DDP / box-LQR solver.

    Attributes:
        max_iter: outer iterations (box-DDP steps). For a bounded LQR problem these are the
            iterations that settle the active set (an unbounded LQR takes exactly one).
        tol: fixed-point tolerance on the controls: an element has converged when the full
            step changes no control by more than ``tol * (1 + max |u|)``. None picks a
            default for the dtype (1e-7 in float64, 1e-4 in float32).
        qp_max_iter: projected-Newton iterations of each box QP.
        line_search_decay: step-size factor between line-search candidates.
        max_line_search: number of line-search candidates (1, decay, decay^2, ...).
        grad_method: "exact" (implicit differentiation of the true optimality conditions,
            with the Hessian of the Lagrangian), "paper" (the paper's Module 2: differentiate
            the last convex approximation; exact only for affine dynamics), or "unroll"
            (autograd through every iteration; as the iterations converge it tends to
            "exact", not to "paper").
        jacobian: how dynamics are linearized: "autograd" (vectorized, torch.func),
            "analytic" (the model's ``jacobian(x, u)`` method) or "finite_diff" (central).
        finite_diff_eps: step of the central differences (relative to 1 + |tau|).
        on_unconverged: what happens when an element stops before a fixed point:
            "zero_grad" (default: one warning per call with the counts, and while autograd
            records no gradient flows from those elements: the implicit gradient holds at a
            fixed point only, and a training loop must not receive one from elsewhere, as
            mpc.pytorch and the paper's section 4.3 do), "warn" (the warning only; their
            gradient, taken away from a fixed point, flows), "raise" (``ConvergenceError``
            naming the elements), or "ignore" (the report in ``info`` only; the gradient
            flows).
        regularization: initial diagonal added to a Q_uu block that is not positive
            definite (it grows by 10x until the Cholesky factorization succeeds).
        newton_residual: an element whose fixed-point residual is at most this takes
            Newton steps: the Hessian of the Lagrangian (the cost's plus the dynamics'
            curvature weighted by the costates) in place of the cost's alone (iLQR's
            Gauss-Newton model). Near a solution they converge quadratically where iLQR
            converges linearly, at a rate the dynamics' curvature sets (0.5 per step for a
            pendulum swing-up with a heavy torque weight). They cost one more call of the
            dynamics' second derivatives per step, so they are taken where they pay: once
            an element's last Gauss-Newton contraction, kept up, would need more than 5
            steps to reach the tolerance. The same fixed point; a Newton step that no step
            size accepts falls back to Gauss-Newton for the rest of the solve.
            0 turns them off (they are off for the finite-difference Jacobian and for
            ``grad_method="unroll"``).
        backend: the implementation of the numerics that call no user code: "auto"
            (default: the environment variable ``MPC_POLICY_BACKEND`` if set, else the
            compiled kernels for CPU tensors when numba is installed, torch otherwise),
            "compiled" (numba, CPU) or "torch" (any device; the reference). See
            ``mpc_policy.solve.backend``.
        constraint_tol: with ``constraints``: an element has converged when its complementarity
            residual max |min(-g, mu)| (the violation included) is at most this. None picks a
            default for the dtype (1e-8 in float64, 1e-4 in float32). The box-DDP solves
            inside run at tolerance min(tol, constraint_tol / 10).
        max_outer_iter: with ``constraints``: augmented-Lagrangian multiplier updates (the
            box-DDP solve after each runs at most 10 iterations, the first ``max_iter``).
        penalty_init: with ``constraints``: the initial penalty rho of the augmented cost.
        penalty_growth: with ``constraints``: the factor (> 1) rho grows by when the residual
            did not fall below a quarter of its last value.
        penalty_max: with ``constraints``: the largest rho; an element whose violation does
            not fall at it is ``Status.INFEASIBLE``. None picks a default for the dtype (1e6
            in float64, 1e4 in float32): a multiplier update moves mu by rho times the
            error of the inner solve, so a larger rho needs a tighter ``tol``.
        double_backward: a second derivative through ``MPC`` with ``grad_method`` "exact" or
            "paper" (``create_graph=True``): "refuse" (a ``ValueError``: the implicit
            gradient is exact to first order only, 0.2-0.7 % off on a pendulum) or
            "first_order" (the local model's derivatives held constant: exact only where the
            outer derivative of the solution vanishes, as in the Fisher-vector products of
            TRPO's KL at the old policy). ``lqr_solve`` and "unroll" are exact either way.
    """

    max_iter: int = 50
    tol: float | None = None
    qp_max_iter: int = 30
    line_search_decay: float = 0.3
    max_line_search: int = 10
    grad_method: GradMethod = "exact"
    jacobian: JacobianMethod = "autograd"
    finite_diff_eps: float = 1e-6
    on_unconverged: OnUnconverged = "zero_grad"
    regularization: float = 1e-8
    newton_residual: float = 0.1
    backend: Backend = "auto"
    constraint_tol: float | None = None
    max_outer_iter: int = 50
    penalty_init: float = 10.0
    penalty_growth: float = 10.0
    penalty_max: float | None = None
    double_backward: DoubleBackward = "refuse"

    def __post_init__(self) -> None:
        for name, literal in (
            ("grad_method", GradMethod),
            ("jacobian", JacobianMethod),
            ("on_unconverged", OnUnconverged),
            ("backend", Backend),
            ("double_backward", DoubleBackward),
        ):
            value = getattr(self, name)
            if value not in get_args(literal):
                raise ValueError(f"{name}: expected one of {get_args(literal)}, received {value!r}")
        for name in ("max_iter", "qp_max_iter", "max_line_search", "max_outer_iter"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                object.__setattr__(self, name, int(value))  # numpy integers too
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{name}: expected an integer >= 1, received {value!r} ({type(value).__name__})"
                )
        for name in (
            "tol",
            "line_search_decay",
            "finite_diff_eps",
            "regularization",
            "newton_residual",
            "constraint_tol",
            "penalty_init",
            "penalty_growth",
            "penalty_max",
        ):
            value = getattr(self, name)
            if value is None and name in ("tol", "constraint_tol", "penalty_max"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"{name}: expected a float, received {value!r} ({type(value).__name__})"
                )
            object.__setattr__(self, name, float(value))
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol: expected a positive float or None, received {self.tol!r}")
        if not 0 < self.line_search_decay < 1:
            raise ValueError(
                f"line_search_decay: expected a float in (0, 1), "
                f"received {self.line_search_decay!r}"
            )
        if not self.finite_diff_eps > 0:
            raise ValueError(
                f"finite_diff_eps: expected a positive float, received {self.finite_diff_eps!r}"
            )
        for name in ("constraint_tol", "penalty_init", "penalty_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected a positive float, received {value!r}")
        if not self.penalty_growth > 1:
            raise ValueError(
                f"penalty_growth: expected a float > 1, received {self.penalty_growth!r}"
            )
        if not self.newton_residual >= 0:
            raise ValueError(
                f"newton_residual: expected a float >= 0, received {self.newton_residual!r}"
            )
        if not self.regularization > 0:
            raise ValueError(
                f"regularization: expected a positive float, received {self.regularization!r}"
            )

    @classmethod
    def from_kwargs(cls, base: MPCOptions | None = None, **kwargs: Any) -> MPCOptions:
        """Options from keyword arguments; an unknown name is a ``TypeError`` naming it.

        A functional solve (``lqr_solve``) builds its options on every call: the options of
        hashable arguments are validated once and reused (they are frozen).
        """
        if cls is MPCOptions:
            try:
                return _cached_options(base, tuple(sorted(kwargs.items())))
            except TypeError as error:
                if "unhashable" not in str(error):
                    raise
        return cls._build(base, kwargs)

    @classmethod
    def _build(cls, base: MPCOptions | None, kwargs: dict[str, Any]) -> MPCOptions:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown solver option(s) {unknown}; the options are {sorted(names)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        values.update(kwargs)
        return cls(**values)

    def tolerance(self, dtype: torch.dtype) -> float:
        """The fixed-point tolerance for a dtype."""
        if self.tol is not None:
            return self.tol
        return 1e-7 if dtype == torch.float64 else 1e-4

    @staticmethod
    def cost_rounding(dtype: torch.dtype) -> float:
        """The relative rounding of a cost in a dtype: a line-search step whose cost rises by
        less than cost_rounding * (1 + |cost|) is not refused (the acceptance rule of every
        box-DDP loop, torch and compiled)."""
        return COST_ROUNDING * torch.finfo(dtype).eps

    def cost_threshold(self, cost: Tensor) -> Tensor:
        """(B,) the cost a line-search step from ``cost`` (B,) must not exceed."""
        cost = cost.detach()
        return cost + self.cost_rounding(cost.dtype) * (1.0 + cost.abs())

    def constraint_tolerance(self, dtype: torch.dtype) -> float:
        """The complementarity tolerance of constrained solves for a dtype."""
        if self.constraint_tol is not None:
            return self.constraint_tol
        return 1e-8 if dtype == torch.float64 else 1e-4

    def penalty_limit(self, dtype: torch.dtype) -> float:
        """The largest augmented-Lagrangian penalty for a dtype."""
        if self.penalty_max is not None:
            return self.penalty_max
        return 1e6 if dtype == torch.float64 else 1e4


@functools.lru_cache(maxsize=256)
def _cached_options(base: MPCOptions | None, items: tuple[tuple[str, Any], ...]) -> MPCOptions:
    return MPCOptions._build(base, dict(items))
