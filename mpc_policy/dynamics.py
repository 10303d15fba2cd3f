"""Dynamics modules for the MPC solver.

A dynamics model is an ``nn.Module`` called as ``dynamics(x, u)`` with x (..., n) and
u (..., m) on any leading batch shape, returning the next state x_next (..., n):

    x_{t+1} = f(x_t, u_t)

The solver linearizes it around a trajectory (``mpc_policy.linearize``): with vectorized
autograd by default, with ``jacobian(x, u) -> (..., n, n+m)`` if the model defines it
(``jacobian="analytic"``), or with central finite differences.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AffineDynamics"]


class AffineDynamics(nn.Module):
    """Affine dynamics x_{t+1} = F [x_t; u_t] + f.

    Args:
        F: (n, n+m) dynamics matrix, or (B, n, n+m) one per batch element.
        f: (n,) or (B, n) offset; None means zero.

    With per-element matrices the inputs are (..., B, n) and (..., B, m): the batch
    dimension is the last one before the features, which is how the solver calls
    dynamics (time or line-search candidates first, batch next).
    """

    def __init__(self, F: Tensor, f: Tensor | None = None) -> None:
        super().__init__()
        if F.dim() not in (2, 3) or F.shape[-1] <= F.shape[-2]:
            raise ValueError(
                f"F: expected shape (n, n+m) or (B, n, n+m) with m >= 1, received {tuple(F.shape)}"
            )
        if f is None:
            f = torch.zeros(F.shape[:-1], dtype=F.dtype, device=F.device)
        if f.shape[-1] != F.shape[-2]:
            raise ValueError(
                f"f: expected last dimension n = {F.shape[-2]}, received {tuple(f.shape)}"
            )
        self.F = F
        self.f = f

    @property
    def n_state(self) -> int:
        return int(self.F.shape[-2])

    @property
    def n_ctrl(self) -> int:
        return int(self.F.shape[-1] - self.F.shape[-2])

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state (..., n) for x (..., n), u (..., m)."""
        tau = torch.cat([x, u], dim=-1)
        F, f = self.F.to(tau.dtype), self.f.to(tau.dtype)
        return (F @ tau.unsqueeze(-1)).squeeze(-1) + f

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Exact Jacobian (..., n, n+m) of the next state with respect to [x; u]."""
        F = self.F.to(x.dtype)
        return F.expand(*x.shape[:-1], *F.shape[-2:])
