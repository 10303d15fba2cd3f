"""Dynamics modules for the MPC solver.

A dynamics model is an ``nn.Module`` called as ``dynamics(x, u)`` returning the next state;
the solver calls it on rows x (N, n), u (N, m) -> (N, n) (``mpc_policy.problem.contract``), and a
model written with ``...`` indexing also works on any leading shape:

    x_{t+1} = f(x_t, u_t)

The solver linearizes it around a trajectory (``mpc_policy.problem.linearize``): with vectorized
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

    With per-element matrices the inputs are rows (N, n), (N, m) in blocks of B, row r
    belonging to batch element r mod B (how the solver flattens its leading dimensions,
    ``mpc_policy.problem.contract``), or equivalently (..., B, n), (..., B, m).
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

    def _blocks(self, z: Tensor) -> Tensor:
        """z (..., k) as (-1, B, k) for per-element matrices, unchanged otherwise."""
        if self.F.dim() == 2:
            return z
        B = self.F.shape[0]
        rows = z.shape[:-1].numel()
        if z.dim() < 2 or rows % B != 0:
            raise ValueError(
                f"AffineDynamics: with per-element matrices for B = {B} elements, expected "
                f"rows (k * B, n) or (..., B, n), received shape {tuple(z.shape)}"
            )
        return z.reshape(-1, B, z.shape[-1])

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state (..., n) for x (..., n), u (..., m)."""
        tau = torch.cat([x, u], dim=-1)
        F, f = self.F.to(tau.dtype), self.f.to(tau.dtype)
        out = (F @ self._blocks(tau).unsqueeze(-1)).squeeze(-1) + f
        return out.reshape(*tau.shape[:-1], self.n_state)

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Exact Jacobian (..., n, n+m) of the next state with respect to [x; u]."""
        F = self.F.to(x.dtype)
        blocks = self._blocks(x)
        return F.expand(*blocks.shape[:-1], *F.shape[-2:]).reshape(*x.shape[:-1], *F.shape[-2:])

    def select_batch(self, index: Tensor) -> AffineDynamics:
        """The dynamics of the batch elements ``index`` (k,) (all, when shared)."""
        if self.F.dim() == 2:
            return self
        f = self.f[index] if self.f.dim() == 2 else self.f
        return AffineDynamics(self.F[index], f)
