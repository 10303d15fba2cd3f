"""The slew-rate penalty, by augmenting the state with the previous control.

A slew-rate penalty of weight gamma turns the problem into

    min  sum_{t=1}^{T}  C_t(x_t, u_t) + gamma/2 ||u_t - u_{t-1}||^2,   u_0 given

which couples consecutive controls, so it is not a per-step cost of (x_t, u_t). Carrying the
previous control in the state, z_t = [u_{t-1}; x_t] (previous control first), with

    z_1 = [u_0; x_init],   z_{t+1} = [u_t; f(x_t, u_t)]

makes the penalty a quadratic in (z_t, u_t) and the augmented problem an ordinary one with
n' = m + n states, for ``MPC`` or ``lqr_solve``:

    controller = MPC(m + n, m, T, u_lower, u_upper)
    sol = controller(augment_state(x_init, u_prev), SlewRateCost(cost, gamma, m),
                     SlewRateDynamics(dynamics, m))
    x = sol.x[..., m:]                                   # (B, T, n); sol.cost includes the penalty

    sol = lqr_solve(augment_state(x_init, u_prev), *slew_rate_lqr(C, c, F, f, gamma),
                    u_lower, u_upper)

Gradients reach u_0 through z_1, and the weight where it is a tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = ["SlewRateCost", "SlewRateDynamics", "augment_state", "slew_rate_lqr"]


def _copy_control(m: int, d: int, lead: torch.Size, like: Tensor) -> Tensor:
    """(*lead, m, d) rows [0 ... 0 I]: u, the last m entries of tau = [u_prev; x; u]."""
    rows = torch.zeros(m, d, dtype=like.dtype, device=like.device)
    rows[:, d - m :] = torch.eye(m, dtype=like.dtype, device=like.device)
    return rows.expand(*lead, m, d)


def augment_state(x_init: Tensor, u_prev: Tensor | None, n_ctrl: int | None = None) -> Tensor:
    """The augmented initial state z_1 = [u_0; x_init].

    Args:
        x_init: (B, n) initial states.
        u_prev: (B, m) or (m,) control before u_1; None is zero (then ``n_ctrl`` gives m).
        n_ctrl: m, needed when ``u_prev`` is None.

    Returns:
        (B, m+n) augmented initial states.
    """
    if u_prev is None:
        if n_ctrl is None:
            raise ValueError("n_ctrl: expected the control size when u_prev is None, received None")
        u_prev = x_init.new_zeros(n_ctrl)
    if u_prev.dim() not in (1, 2) or (u_prev.dim() == 2 and u_prev.shape[0] != x_init.shape[0]):
        raise ValueError(
            f"u_prev: expected shape (B, m) with B = {x_init.shape[0]} or (m,), "
            f"received {tuple(u_prev.shape)}"
        )
    u_prev = u_prev.to(x_init.dtype).expand(x_init.shape[0], u_prev.shape[-1])
    return torch.cat([u_prev, x_init], dim=-1)


def _penalty(weight: float | Tensor, m: int, d: int, like: Tensor) -> Tensor:
    """(d+m, d+m) P with 1/2 tau'P tau = weight/2 ||u - u_prev||^2, tau = [u_prev; x; u]."""
    eye = torch.eye(m, dtype=like.dtype, device=like.device)
    P = torch.zeros(d + m, d + m, dtype=like.dtype, device=like.device)
    P[:m, :m], P[d:, d:], P[:m, d:], P[d:, :m] = eye, eye, -eye, -eye
    return weight * P


def slew_rate_lqr(
    C: Tensor, c: Tensor, F: Tensor, f: Tensor, weight: float | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LQR terms of the augmented problem, for ``lqr_solve``.

    Args:
        C: (B, T, n+m, n+m) quadratic cost terms on tau = [x; u].
        c: (B, T, n+m) linear cost terms.
        F: (B, T-1, n, n+m) dynamics matrices.
        f: (B, T-1, n) dynamics offsets.
        weight: gamma >= 0, a float or a scalar tensor.

    Returns:
        C (B, T, 2m+n, 2m+n) and c (B, T, 2m+n) on [u_prev; x; u], F (B, T-1, m+n, 2m+n) and
        f (B, T-1, m+n) for z_{t+1} = [u_t; F_t tau_t + f_t].
    """
    d, n = C.shape[-1], F.shape[-2]
    m = d - n
    C_z = nnf.pad(C, (m, 0, m, 0)) + _penalty(weight, m, d, C)
    top = _copy_control(m, d + m, F.shape[:-2], F)
    F_z = torch.cat([top, nnf.pad(F, (m, 0))], dim=-2)
    return C_z, nnf.pad(c, (m, 0)), F_z, nnf.pad(f, (m, 0))


class SlewRateDynamics(nn.Module):
    """z_{t+1} = [u_t; f(x_t, u_t)] for z_t = [u_{t-1}; x_t].

    Args:
        dynamics: f(x (..., n), u (..., m)) -> (..., n); its ``jacobian(x, u)``, if any,
            gives this module's (``MPC(..., jacobian="analytic")``), and its
            ``select_batch(index)``, if any, this module's.
        n_ctrl: m.
    """

    def __init__(self, dynamics: nn.Module, n_ctrl: int) -> None:
        super().__init__()
        self.dynamics, self.n_ctrl = dynamics, n_ctrl
        if callable(getattr(dynamics, "select_batch", None)):
            self.select_batch = self._select_batch

    def _select_batch(self, index: Tensor) -> SlewRateDynamics:
        """The dynamics of the batch elements ``index`` (k,), by the dynamics' own."""
        return SlewRateDynamics(self.dynamics.select_batch(index), self.n_ctrl)  # type: ignore[operator]

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """Next augmented state (..., m+n) for z (..., m+n), u (..., m)."""
        x_next = self.dynamics(z[..., self.n_ctrl :], u)
        return torch.cat([u.expand(*x_next.shape[:-1], self.n_ctrl), x_next], dim=-1)

    def jacobian(self, z: Tensor, u: Tensor) -> Tensor:
        """Jacobian (..., m+n, 2m+n) with respect to [u_prev; x; u]."""
        jacobian = getattr(self.dynamics, "jacobian", None)
        if not callable(jacobian):
            raise TypeError(
                f"dynamics: expected a jacobian(x, u) method for jacobian='analytic'; "
                f"{type(self.dynamics).__name__} has none"
            )
        m = self.n_ctrl
        J = jacobian(z[..., m:], u)  # (..., n, n+m)
        top = _copy_control(m, J.shape[-1] + m, J.shape[:-2], J)
        return torch.cat([top, nnf.pad(J, (m, 0))], dim=-2)


class SlewRateCost(nn.Module):
    """cost(x_t, u_t) + weight/2 ||u_t - u_{t-1}||^2 on the augmented state z_t = [u_{t-1}; x_t].

    Args:
        cost: cost(x (B, T, n), u (B, T, m)) -> (B, T); where it has ``quadratize(x, u)``
            (e.g. ``QuadraticCost``), so has this cost (the exact derivatives plus the penalty's);
            the same for ``select_batch(index)``.
        weight: gamma >= 0, a float or a scalar tensor (learnable).
        n_ctrl: m.
    """

    def __init__(self, cost: nn.Module, weight: float | Tensor, n_ctrl: int) -> None:
        super().__init__()
        if not isinstance(weight, Tensor) and not float(weight) >= 0:
            raise ValueError(f"weight: expected a float >= 0, received {weight!r}")
        self.cost, self.weight, self.n_ctrl = cost, weight, n_ctrl
        if callable(getattr(cost, "quadratize", None)):
            self.quadratize = self._quadratize
        if callable(getattr(cost, "select_batch", None)):
            self.select_batch = self._select_batch

    def _select_batch(self, index: Tensor) -> SlewRateCost:
        """The cost of the batch elements ``index`` (k,), by the cost's own."""
        return SlewRateCost(self.cost.select_batch(index), self.weight, self.n_ctrl)  # type: ignore[operator]

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for z (B, T, m+n), u (B, T, m)."""
        change = u - z[..., : self.n_ctrl]
        return self.cost(z[..., self.n_ctrl :], u) + 0.5 * self.weight * (change * change).sum(-1)

    def _quadratize(self, z: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Hessian (B, T, 2m+n, 2m+n) and gradient (B, T, 2m+n) from the cost's own."""
        m = self.n_ctrl
        H, g = self.cost.quadratize(z[..., m:], u)  # type: ignore[operator]
        P = _penalty(self.weight, m, H.shape[-1], H)
        tau = torch.cat([z, u], dim=-1)
        return nnf.pad(H, (m, 0, m, 0)) + P, nnf.pad(g, (m, 0)) + tau @ P
