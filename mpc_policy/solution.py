"""What a solve returns: the trajectory, its cost and a per-element convergence report."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ConvergenceError", "Solution", "SolverInfo"]


class ConvergenceError(RuntimeError):
    """Raised when ``on_unconverged="raise"`` and some batch elements did not converge."""


@dataclass
class SolverInfo:
    """Per-element report of a solve (paper, section 4.3: non-convergence is data).

    Attributes:
        iterations: (B,) outer iterations each element used.
        converged: (B,) whether each element reached a fixed point within tolerance.
        residual: (B,) final fixed-point residual: the largest control change that a full
            step of the convex approximation (on the linearized dynamics) would still
            make, relative to 1 + max |u|.
        step_size: (B,) the last line-search step accepted (0 if none was).
        backend: which implementation ran the numerics, "compiled" or "torch"
            (``mpc_policy.backend``).
    """

    iterations: Tensor
    converged: Tensor
    residual: Tensor
    step_size: Tensor
    backend: str = "torch"

    def clone(self) -> SolverInfo:
        """A copy with cloned tensors (ordinary ones, for a report made in inference mode)."""
        return SolverInfo(
            self.iterations.clone(),
            self.converged.clone(),
            self.residual.clone(),
            self.step_size.clone(),
            backend=self.backend,
        )

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def unconverged_indices(self) -> list[int]:
        return torch.nonzero(~self.converged).flatten().tolist()

    @property
    def unconverged_fraction(self) -> float:
        return float((~self.converged).float().mean())

    def describe_unconverged(self) -> str:
        bad = self.unconverged_indices
        shown = bad[:10]
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        residual = self.residual[shown].tolist()
        return (
            f"{len(bad)} of {self.converged.numel()} batch elements did not reach a fixed "
            f"point: indices {shown}{more}, residuals {[f'{r:.2e}' for r in residual]}; "
            "raise max_iter, loosen tol or warm-start with u_init"
        )

    def enforce(self, policy: str) -> None:
        """Apply the user's policy for unconverged elements (warn / raise / ...)."""
        if self.all_converged or policy == "ignore":
            return
        if policy == "raise":
            raise ConvergenceError(self.describe_unconverged())
        suffix = "; their gradients are zeroed" if policy == "zero_grad" else ""
        warnings.warn(self.describe_unconverged() + suffix, RuntimeWarning, stacklevel=3)


@dataclass
class Solution:
    """Result of ``lqr_solve`` or ``MPC``.

    Attributes:
        x: (B, T, n) optimal states.
        u: (B, T, m) optimal controls.
        cost: (B,) objective value of the trajectory.
        info: per-element convergence report.
    """

    x: Tensor
    u: Tensor
    cost: Tensor
    info: SolverInfo
