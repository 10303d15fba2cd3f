"""mpc.pytorch's time-major problem data as the batch-first terms of ``mpc_policy``.

mpc.pytorch stores every per-step term time first, ``[T, B, ...]``, and lets a term drop its
batch dimension (``[T, ...]``) or both leading dimensions (``[...]``); the solver here is
batch first, ``(B, T, ...)`` (DESIGN.md). These functions convert, check and broadcast the
terms of

    min  sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t,   tau_t = [x_t; u_t]
    s.t. x_{t+1} = F_t tau_t + f_t,  u_lower <= u_t <= u_upper,  u_t = 0 where u_zero_I

Every conversion is a view (transpose or expand) of the caller's tensor, so gradients flow
back to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mpc_policy.dynamics import AffineDynamics

__all__ = [
    "batch_first",
    "contiguous_grad",
    "control_bound",
    "dynamics_terms",
    "initial_controls",
    "previous_controls",
    "quadratic_terms",
    "time_invariant_dynamics",
    "zero_mask",
]


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on contiguous (mpc.pytorch's layout)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor) -> Tensor:
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def contiguous_grad(value: Any) -> Any:
    """A user's tensor whose gradient will arrive contiguous; anything else unchanged.

    The solver works on batch-first views (transposes, expands) of the time-major terms,
    so the raw gradient of a term is a transposed view; ``grad.view(-1)`` on it fails
    where it works with mpc.pytorch.
    """
    if isinstance(value, Tensor) and value.requires_grad:
        return _ContiguousGrad.apply(value)
    return value


def _shape(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def batch_first(name: str, value: Tensor, steps: int, batch: int, tail: Sequence[int]) -> Tensor:
    """A time-major term as a batch-first view (B, steps, *tail).

    Args:
        name: argument name for messages.
        value: [steps, B, *tail], [steps, 1, *tail], [steps, *tail] or [*tail].
        steps: number of time steps the term has.
        batch: the batch size B.
        tail: the per-step shape.

    Returns:
        (B, steps, *tail) view of ``value``.
    """
    tail = tuple(tail)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(value).__name__}")
    shape = tuple(value.shape)
    if shape == tail:
        return value.expand(batch, steps, *tail)
    if shape == (steps, *tail):
        return value.unsqueeze(0).expand(batch, steps, *tail)
    if len(shape) == len(tail) + 2 and shape[0] == steps and shape[2:] == tail:
        if shape[1] in (batch, 1):
            return value.transpose(0, 1).expand(batch, steps, *tail)
    raise ValueError(
        f"{name}: expected shape {_shape(('T', 'B', *tail))} = {_shape((steps, batch, *tail))} "
        f"(time-major), {_shape((steps, *tail))} or {_shape(tail)}, received {_shape(shape)}"
    )


def quadratic_terms(
    C: Tensor, c: Tensor | None, horizon: int, batch: int, n_tau: int
) -> tuple[Tensor, Tensor]:
    """The cost terms of a ``QuadCost``, batch first.

    Args:
        C: [T, B, n+m, n+m], [T, n+m, n+m] or [n+m, n+m] quadratic terms.
        c: [T, B, n+m], [T, n+m], [n+m] linear terms, or None (zero).
        horizon: T.
        batch: B.
        n_tau: n + m.

    Returns:
        C (B, T, n+m, n+m) and c (B, T, n+m).
    """
    C = batch_first("QuadCost.C", C, horizon, batch, (n_tau, n_tau))
    if c is None or c.numel() == 0:
        c = torch.zeros(n_tau, dtype=C.dtype, device=C.device)
    return C, batch_first("QuadCost.c", c, horizon, batch, (n_tau,))


def dynamics_terms(
    F: Tensor | None, f: Tensor | None, horizon: int, batch: int, n_state: int, n_tau: int
) -> tuple[Tensor, Tensor]:
    """The dynamics terms of a ``LinDx``, batch first, for the T-1 transitions.

    mpc.pytorch reads F[t] and f[t] for t < T-1 only, so a term with T steps (as in its
    README) has its last step dropped.

    Args:
        F: [T-1 or T, B, n, n+m], [T-1 or T, n, n+m] or [n, n+m] dynamics matrices.
        f: [T-1 or T, B, n], [T-1 or T, n], [n], None or an empty tensor (zero).
        horizon: T.
        batch: B.
        n_state: n.
        n_tau: n + m.

    Returns:
        F (B, T-1, n, n+m) and f (B, T-1, n).
    """
    steps = horizon - 1
    if F is None:
        raise ValueError("LinDx.F: expected a tensor, received None")

    def leading(name: str, value: Tensor, tail: tuple[int, ...]) -> Tensor:
        if value.dim() > len(tail) and value.shape[0] == horizon and horizon > steps:
            value = value[:steps]
        return batch_first(name, value, steps, batch, tail)

    F = leading("LinDx.F", F, (n_state, n_tau))
    if f is None or f.numel() == 0:
        f = torch.zeros(n_state, dtype=F.dtype, device=F.device)
    return F, leading("LinDx.f", f, (n_state,))


def time_invariant_dynamics(F: Tensor, f: Tensor) -> AffineDynamics:
    """A ``LinDx`` as a dynamics module, for a cost module (a module sees no time index).

    Args:
        F: (B, T-1, n, n+m) dynamics matrices, the same at every step.
        f: (B, T-1, n) offsets, the same at every step.
    """
    if F.shape[1] == 0:  # T = 1: no transition
        return AffineDynamics(F.new_zeros(F.shape[0], *F.shape[2:]))
    if not (torch.equal(F, F[:, :1].expand_as(F)) and torch.equal(f, f[:, :1].expand_as(f))):
        raise ValueError(
            "dx: a time-varying LinDx with a cost module is not supported (a dynamics module "
            "sees no time index); pass a QuadCost, or a LinDx whose F and f are the same at "
            "every step"
        )
    return AffineDynamics(F[:, 0], f[:, 0])


def control_bound(
    name: str,
    value: float | Tensor | None,
    zero: Tensor | None,
    horizon: int,
    batch: int,
    n_ctrl: int,
    like: Tensor,
) -> float | Tensor | None:
    """A control bound in a form ``mpc_policy`` takes, with ``u_zero_I`` folded in.

    Args:
        name: "u_lower" or "u_upper".
        value: a float, or [T, B, m] (also [T, m] or [m]); None = unbounded on this side.
        zero: [T, B, m] boolean mask of the controls fixed to 0 (``u_zero_I``), or None.
        horizon, batch, n_ctrl: T, B, m.
        like: a tensor with the problem's dtype and device.

    Returns:
        The float itself, a (B, T, m) tensor, or None.
    """
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.expand(n_ctrl)
    if isinstance(value, Tensor) and value.dim() == 2 and horizon == batch > 1:
        # as mpc_policy's own API: [T, m] (per step) and [B, m] (per element) look alike
        raise ValueError(
            f"{name}: shape {_shape(tuple(value.shape))} is ambiguous with B = T = {batch}: "
            f"[T, m], one bound per time step, or [B, m], one per batch element; pass "
            f"[T, 1, m] = [{horizon}, 1, {n_ctrl}] for per-time-step bounds or [T, B, m] "
            f"(e.g. bound.expand({horizon}, {batch}, {n_ctrl})) for per-element ones"
        )
    if isinstance(value, Tensor):
        value = batch_first(name, value, horizon, batch, (n_ctrl,))
    elif value is not None and not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, a tensor or None, received {type(value)}")
    if zero is None:
        return float(value) if isinstance(value, (int, float)) else value
    if value is None:
        value = float("-inf") if name == "u_lower" else float("inf")
    bound = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    bound = bound.expand(batch, horizon, n_ctrl)
    return torch.where(zero, torch.zeros_like(bound), bound)


def zero_mask(u_zero_I: Tensor | None, horizon: int, batch: int, n_ctrl: int) -> Tensor | None:
    """``u_zero_I`` [T, B, m] (nonzero = fixed to 0) as a (B, T, m) boolean mask, or None."""
    if u_zero_I is None:
        return None
    mask = batch_first("u_zero_I", u_zero_I, horizon, batch, (n_ctrl,))
    return mask.bool()


def initial_controls(
    u_init: Tensor | None, horizon: int, batch: int, n_ctrl: int, like: Tensor
) -> Tensor | None:
    """The warm start [T, B, m] or [T, m] as a detached (B, T, m) tensor, or None."""
    if u_init is None:
        return None
    u = batch_first("u_init", u_init, horizon, batch, (n_ctrl,))
    return u.detach().to(dtype=like.dtype, device=like.device)


def previous_controls(prev_ctrl: Tensor | None, batch: int, n_ctrl: int, like: Tensor) -> Tensor:
    """The control before u_1 for the slew-rate penalty, (B, m); zeros when None.

    Args:
        prev_ctrl: [m], [B, m] or [1, B, m] (mpc.pytorch's forms), or None.
    """
    if prev_ctrl is None:
        return torch.zeros(batch, n_ctrl, dtype=like.dtype, device=like.device)
    if not isinstance(prev_ctrl, Tensor):
        raise TypeError(f"prev_ctrl: expected a torch.Tensor, received {type(prev_ctrl)}")
    value = prev_ctrl[0] if prev_ctrl.dim() == 3 and prev_ctrl.shape[0] == 1 else prev_ctrl
    if tuple(value.shape) in ((n_ctrl,), (1, n_ctrl), (batch, n_ctrl)):
        return value.to(like.dtype).expand(batch, n_ctrl)
    raise ValueError(
        f"prev_ctrl: expected shape (m,) = ({n_ctrl},), (B, m) = ({batch}, {n_ctrl}) or "
        f"(1, B, m), received {_shape(tuple(prev_ctrl.shape))}"
    )
