"""Cost modules for the MPC solver.

A cost is an ``nn.Module`` called as ``cost(x, u)`` with x (B, T, n) and u (B, T, m) that
returns the per-step cost (B, T). The solver needs, at a trajectory tau = [x; u], the
per-step gradient and Hessian with respect to tau_t; a cost may supply them exactly through
``quadratize(x, u) -> (hessian (B, T, n+m, n+m), gradient (B, T, n+m))``, otherwise
``mpc_policy.problem.linearize`` computes them with vectorized autograd.

Two costs are provided:

    QuadraticCost:      C_t(tau) = 1/2 tau' C_t tau + c_t' tau
    GoalWeightedCost:   C(tau)   = sum_i w_i (tau_i - goal_i)^2 + c_lin' tau
                        (the paper's learnable cost || w_g * (tau - tau_g) ||^2 of
                        section 5.3 with w = w_g^2, kept positive by a softplus)
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = ["GoalWeightedCost", "QuadraticCost"]


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


class QuadraticCost(nn.Module):
    """Quadratic per-step cost 1/2 tau_t' C_t tau_t + c_t' tau_t with tau_t = [x_t; u_t].

    Args:
        C: (n+m, n+m), (T, n+m, n+m) or (B, T, n+m, n+m) quadratic terms (symmetrized).
        c: (n+m,), (T, n+m) or (B, T, n+m) linear terms; None means zero.

    The terms are registered as buffers; wrap them in ``nn.Parameter`` yourself (and pass
    them in) to learn them, since they are used as given.
    """

    def __init__(self, C: Tensor, c: Tensor | None = None) -> None:
        super().__init__()
        if C.dim() < 2 or C.shape[-1] != C.shape[-2]:
            raise ValueError(
                f"C: expected a (..., n+m, n+m) square matrix, received shape {tuple(C.shape)}"
            )
        if c is None:
            c = torch.zeros(C.shape[:-1], dtype=C.dtype, device=C.device)
        if c.shape[-1] != C.shape[-1]:
            raise ValueError(
                f"c: expected last dimension {C.shape[-1]} to match C, "
                f"received shape {tuple(c.shape)}"
            )
        self.C = C
        self.c = c

    def _tau(self, x: Tensor, u: Tensor) -> Tensor:
        """(B, T, n+m) tau = [x; u], with C's size checked."""
        d = x.shape[-1] + u.shape[-1]
        if self.C.shape[-1] != d:
            raise ValueError(
                f"QuadraticCost: C has size {self.C.shape[-1]} but n+m = {d} for the given x, u"
            )
        return torch.cat([x, u], dim=-1)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for x (B, T, n), u (B, T, m)."""
        tau = self._tau(x, u)
        # tau' C tau = tau' sym(C) tau: the value needs no symmetrization, and one batched
        # matrix-vector product is 2-3x faster than an einsum of three operands
        C_tau = torch.matmul(self.C, tau.unsqueeze(-1)).squeeze(-1)
        return (tau * (0.5 * C_tau + self.c)).sum(-1)

    def quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Exact Hessian (B, T, n+m, n+m) and gradient (B, T, n+m) at tau = [x; u]."""
        tau = self._tau(x, u)
        B, T, d = tau.shape
        C = 0.5 * (self.C + self.C.transpose(-1, -2))
        gradient = torch.matmul(C, tau.unsqueeze(-1)).squeeze(-1) + self.c
        return C.expand(B, T, d, d), gradient.expand(B, T, d)

    def compiled_twin(self) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | None:
        """The compiled solver's description of this cost: "quadratic", (C, c) as given
        (read at every solve, ``mpc_policy.solve.compiled_path``); None for a subclass."""
        if type(self) is QuadraticCost:
            return "quadratic", (self.C, self.c), ()
        return None

    def select_batch(self, index: Tensor) -> QuadraticCost:
        """The cost of the batch elements ``index`` (k,) (all, when shared)."""
        C = self.C[index] if self.C.dim() == 4 else self.C
        c = self.c[index] if self.c.dim() == 3 else self.c
        return QuadraticCost(C, c)


class GoalWeightedCost(nn.Module):
    """The paper's learnable cost C(tau) = sum_i w_i (tau_i - goal_i)^2 (+ linear' tau).

    This is || w_g * (tau - tau_g) ||^2 of the paper with w = w_g^2: the weights multiply
    the squared errors directly, so "weights (1, 1, 0.1, 0.001)" reads as it is written.
    They are kept positive through a softplus of an unconstrained parameter.

    Args:
        weights: (n+m,) positive weights w on the squared errors.
        goal: (n+m,) goal tau_goal; the control part is usually 0.
        linear: optional (n+m,) linear term (e.g. to break a symmetry); zero by default.
        learn_weights: register the weights as an ``nn.Parameter``.
        learn_goal: register the goal as an ``nn.Parameter``.
    """

    linear: Tensor

    def __init__(
        self,
        weights: Tensor,
        goal: Tensor,
        linear: Tensor | None = None,
        *,
        learn_weights: bool = True,
        learn_goal: bool = True,
    ) -> None:
        super().__init__()
        weights = torch.as_tensor(weights)
        goal = torch.as_tensor(goal, dtype=weights.dtype)
        if weights.dim() != 1 or goal.shape != weights.shape:
            raise ValueError(
                "weights and goal: expected two vectors of the same shape (n+m,), received "
                f"{tuple(weights.shape)} and {tuple(goal.shape)}"
            )
        if not bool((weights > 0).all()):
            raise ValueError(f"weights: expected all entries > 0, received {weights.tolist()}")
        raw = _inverse_softplus(weights.clone())
        self.raw_weights = nn.Parameter(raw, requires_grad=learn_weights)
        self.goal = nn.Parameter(goal.clone(), requires_grad=learn_goal)
        if linear is None:
            linear = torch.zeros_like(weights)
        self.register_buffer("linear", torch.as_tensor(linear, dtype=weights.dtype).clone())

    @property
    def weights(self) -> Tensor:
        """(n+m,) the positive weights w."""
        return nnf.softplus(self.raw_weights)

    def compiled_twin(self) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | None:
        """The compiled solver's description of this cost: "goal_weighted", (weights, goal,
        linear) at their current values (``mpc_policy.solve.compiled_path``); None for a
        subclass."""
        if type(self) is GoalWeightedCost:
            return "goal_weighted", (self.weights, self.goal, self.linear), ()
        return None

    def _check(self, x: Tensor, u: Tensor) -> None:
        d = x.shape[-1] + u.shape[-1]
        if d != self.goal.shape[0]:
            raise ValueError(
                f"GoalWeightedCost: weights have size {self.goal.shape[0]} but n+m = {d}"
            )

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for x (B, T, n), u (B, T, m)."""
        self._check(x, u)
        tau = torch.cat([x, u], dim=-1)
        w = self.weights.to(tau.dtype)
        err = tau - self.goal.to(tau.dtype)
        return (w * err * err).sum(-1) + (self.linear.to(tau.dtype) * tau).sum(-1)

    def quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Exact Hessian (B, T, n+m, n+m) and gradient (B, T, n+m) at tau = [x; u]."""
        self._check(x, u)
        tau = torch.cat([x, u], dim=-1)
        w = self.weights.to(tau.dtype)
        hessian = torch.diag_embed(2.0 * w).expand(*tau.shape, tau.shape[-1])
        gradient = 2.0 * w * (tau - self.goal.to(tau.dtype)) + self.linear.to(tau.dtype)
        return hessian, gradient
