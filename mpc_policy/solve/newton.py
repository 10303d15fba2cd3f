"""Newton steps near a solution (``MPCOptions.newton_residual``).

Box-DDP's backward pass uses the cost Hessian alone (Gauss-Newton): near a solution of a
problem with curved dynamics its residual contracts linearly, slowly where the costates are
large. A Newton step adds the costate-weighted curvature of the dynamics,
sum_i lambda_{t+1,i} d2 f_i / d tau_t^2 (the Hessian of the Lagrangian), and contracts
quadratically. ``NewtonSwitch`` decides, per element, when box-DDP takes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from mpc_policy.options import NEWTON_STEPS_LEFT, MPCOptions
from mpc_policy.solve.backend import Kernels
from mpc_policy.solve.rollout import Model

__all__ = ["NewtonSwitch"]


@dataclasses.dataclass
class NewtonSwitch:
    """Newton steps near a solution: the Hessian of the Lagrangian in the backward pass for
    an element near the solution that Gauss-Newton brings in slowly, and from then on while
    it stays near; an element whose Newton step every step size refuses falls back to
    Gauss-Newton (``gauss_newton``) for good.

    Attributes:
        curvature: the model's costate-weighted dynamics curvature, or None (no Newton
            steps: affine dynamics, ``newton_residual <= 0``, or a model without it).
        newton, gauss_newton: (B,) the elements taking Newton steps / fallen back.
        last_residual: (B,) the residuals of the last fixed-point test.
        next_pass: whether the next backward pass has Newton elements (read with the
            loop's one sync).
    """

    curvature: Callable[..., Tensor | None] | None
    newton: Tensor
    gauss_newton: Tensor
    last_residual: Tensor
    next_pass: bool

    @classmethod
    def start(
        cls,
        model: Model,
        options: MPCOptions,
        affine: bool,
        state: tuple[Tensor, Tensor, Tensor] | None,
        like: Tensor,
    ) -> NewtonSwitch:
        curvature = getattr(model, "curvature", None)
        if affine or options.newton_residual <= 0 or not callable(curvature):
            curvature = None
        if state is None:
            B = like.shape[0]
            no = torch.zeros(B, dtype=torch.bool, device=like.device)
            inf = torch.full((B,), float("inf"), dtype=like.dtype, device=like.device)
            state = (no, no, inf)
        newton, gauss_newton, last = state
        next_pass = curvature is not None and bool((newton & ~gauss_newton).any())
        return cls(curvature, newton, gauss_newton, last, next_pass)

    def curvature_terms(
        self, x: Tensor, u: Tensor, C: Tensor, g: Tensor, F: Tensor, moved: Tensor, kernels: Kernels
    ) -> tuple[Tensor, Tensor]:
        """The elements stepping by Newton (B,), and C (T, B, d, d) with their Lagrangian
        curvature at the nominal x (T, B, n), u (T, B, m) (g, F: the local model)."""
        stepping = self.newton & moved & ~self.gauss_newton
        if self.curvature is None or not self.next_pass:
            return stepping, C
        H = self.curvature(x, u, kernels.costates_from_gradient(g, F))
        if H is None:  # the model takes no Newton steps
            self.curvature = None
            return stepping & False, C
        C = C.clone()
        C[:-1] += torch.where(stepping.view(1, -1, 1, 1), H, 0.0)
        return stepping, C

    def update(self, residual: Tensor, tol: float, options: MPCOptions) -> None:
        """Switch on the elements near the solution whose contraction is slow."""
        if self.curvature is None:
            return
        rate = residual / self.last_residual
        steps_left = torch.log(tol / residual) / torch.log(rate)
        slow = (rate >= 1.0) | (steps_left > NEWTON_STEPS_LEFT)
        near = residual <= options.newton_residual
        self.newton = near & ~self.gauss_newton & (self.newton | slow)
        self.last_residual = residual

    def pending(self, pending: Tensor) -> bool:
        """Whether any element is ``pending`` (B,); also decides ``next_pass``, in one sync."""
        if self.curvature is None:
            return bool(pending.any())
        any_pending, self.next_pass = torch.stack(
            [pending.any(), (self.newton & pending).any()]
        ).tolist()
        return bool(any_pending)
