"""mpc.pytorch's slew-rate penalty, by augmenting the state with the previous control.

mpc.pytorch's ``slew_rate_penalty=gamma`` solves

    min  sum_{t=1}^{T}  C_t(x_t, u_t) + gamma/2 ||u_t - u_{t-1}||^2,   u_0 = prev_ctrl (0 if None)

Its implementation, and this one, carry the previous control in the state: z_t = [u_{t-1}; x_t]
(previous control first), with

    z_1 = [u_0; x_init],   z_{t+1} = [u_t; f(x_t, u_t)]

so the penalty is a quadratic in (z_t, u_t) and the augmented problem is an ordinary one for
``lqr_solve`` or ``MPC``; its solution's x is z without the first m entries. The returned
cost includes the penalty, as in mpc.pytorch. Gradients reach prev_ctrl through z_1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from mpc_policy.problem.contract import restrict

__all__ = ["SlewCost", "SlewDynamics", "SlewRateCost", "slew_linear", "slew_quadratic"]


def _penalty_matrix(gamma: float, m: int, n: int, like: Tensor) -> Tensor:
    """(2m+n, 2m+n): 1/2 z'Pz = gamma/2 ||u - u_prev||^2 for tau = [u_prev; x; u]."""
    d = 2 * m + n
    P = torch.zeros(d, d, dtype=like.dtype, device=like.device)
    eye = gamma * torch.eye(m, dtype=like.dtype, device=like.device)
    P[:m, :m] = eye
    P[m + n :, m + n :] = eye
    P[:m, m + n :] = -eye
    P[m + n :, :m] = -eye
    return P


def _passthrough(m: int, d: int, lead: torch.Size, like: Tensor) -> Tensor:
    """(*lead, m, d) rows [0 ... 0 I]: the control u, the last m entries of tau, copied."""
    rows = torch.zeros(m, d, dtype=like.dtype, device=like.device)
    rows[:, d - m :] = torch.eye(m, dtype=like.dtype, device=like.device)
    return rows.expand(*lead, m, d)


def slew_quadratic(C: Tensor, c: Tensor, gamma: float, n_ctrl: int) -> tuple[Tensor, Tensor]:
    """Quadratic cost terms of the augmented problem.

    Args:
        C: (B, T, n+m, n+m) quadratic terms on tau = [x; u].
        c: (B, T, n+m) linear terms.
        gamma: the slew-rate penalty.
        n_ctrl: m.

    Returns:
        C (B, T, 2m+n, 2m+n) and c (B, T, 2m+n) on [u_prev; x; u].
    """
    m = n_ctrl
    n = C.shape[-1] - m
    P = _penalty_matrix(gamma, m, n, C)
    return nnf.pad(C, (m, 0, m, 0)) + P, nnf.pad(c, (m, 0))


def slew_linear(F: Tensor, f: Tensor, n_ctrl: int) -> tuple[Tensor, Tensor]:
    """Affine dynamics of the augmented state z = [u_prev; x].

    Args:
        F: (B, T-1, n, n+m) dynamics matrices on tau = [x; u].
        f: (B, T-1, n) offsets.
        n_ctrl: m.

    Returns:
        F (B, T-1, m+n, 2m+n) and f (B, T-1, m+n): z_next = [u; F tau + f].
    """
    m = n_ctrl
    top = _passthrough(m, F.shape[-1] + m, F.shape[:-2], F)
    return torch.cat([top, nnf.pad(F, (m, 0))], dim=-2), nnf.pad(f, (m, 0))


class SlewDynamics(nn.Module):
    """z_{t+1} = [u_t; f(x_t, u_t)] for z_t = [u_{t-1}; x_t].

    Args:
        dynamics: the true dynamics f(x (..., n), u (..., m)) -> (..., n); its
            ``jacobian(x, u)`` is used for this module's ``jacobian``.
        n_ctrl: m.
    """

    def __init__(self, dynamics: nn.Module, n_ctrl: int) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.n_ctrl = n_ctrl

    def select_batch(self, index: Tensor) -> SlewDynamics:
        """The dynamics of the batch elements ``index`` (``mpc_policy.problem.contract``)."""
        return SlewDynamics(restrict(self.dynamics, index), self.n_ctrl)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """Next augmented state (..., m+n) for z (..., m+n), u (..., m)."""
        x_next = self.dynamics(z[..., self.n_ctrl :], u)
        return torch.cat([u.expand(*x_next.shape[:-1], self.n_ctrl), x_next], dim=-1)

    def jacobian(self, z: Tensor, u: Tensor) -> Tensor:
        """Jacobian (..., m+n, 2m+n) with respect to [u_prev; x; u]."""
        m = self.n_ctrl
        jacobian = getattr(self.dynamics, "jacobian", None)
        if not callable(jacobian):
            raise TypeError(f"{type(self.dynamics).__name__} has no jacobian(x, u) method")
        J = jacobian(z[..., m:], u)  # (..., n, n+m)
        top = _passthrough(m, J.shape[-1] + m, J.shape[:-2], J)
        return torch.cat([top, nnf.pad(J, (m, 0))], dim=-2)


class SlewCost(nn.Module):
    """cost(x_t, u_t) + gamma/2 ||u_t - u_{t-1}||^2 on the augmented state.

    Args:
        cost: the true cost, cost(x (B, T, n), u (B, T, m)) -> (B, T).
        gamma: the slew-rate penalty.
        n_ctrl: m.
    """

    def __init__(self, cost: nn.Module, gamma: float, n_ctrl: int) -> None:
        super().__init__()
        self.cost = cost
        self.gamma = gamma
        self.n_ctrl = n_ctrl

    def select_batch(self, index: Tensor) -> SlewCost:
        """The cost of the batch elements ``index`` (``mpc_policy.problem.contract``)."""
        return SlewCost(restrict(self.cost, index), self.gamma, self.n_ctrl)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for z (B, T, m+n), u (B, T, m)."""
        change = u - z[..., : self.n_ctrl]
        penalty = 0.5 * self.gamma * (change * change).sum(-1)
        return self.cost(z[..., self.n_ctrl :], u) + penalty


class SlewRateCost(nn.Module):
    """mpc.pytorch's ``SlewRateCost``: a row-wise cost plus 1/2 tau' slew_C[0] tau.

    Args:
        cost: row-wise cost module cost(tau [N, n+m]) -> [N] on the true tau = [x; u].
        slew_C: [T, B, 2m+n, 2m+n] (or [T, 2m+n, 2m+n]) penalty matrices on the augmented
            tau = [u_prev; x; u]; only the first step's is used (the penalty is
            time-invariant): row i of a call gets batch element i's.
        n_state, n_ctrl: n and m.
    """

    def __init__(self, cost: nn.Module, slew_C: Tensor, n_state: int, n_ctrl: int) -> None:
        super().__init__()
        self.cost, self.slew_C = cost, slew_C
        self.n_state, self.n_ctrl = n_state, n_ctrl

    def forward(self, tau: Tensor) -> Tensor:
        """Costs [N] of augmented rows tau [N, 2m+n]."""
        P = self.slew_C[0]  # [B, d, d] (one per row) or [d, d]
        Ptau = (P @ tau.unsqueeze(-1)).squeeze(-1) if P.dim() == 3 else tau @ P.transpose(0, 1)
        penalty = 0.5 * (Ptau * tau).sum(-1)
        return self.cost(tau[:, self.n_ctrl :]) + penalty

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Not available, as in mpc.pytorch (a cost has no dynamics Jacobian)."""
        raise NotImplementedError("SlewRateCost.grad_input: a cost module has no grad_input")
