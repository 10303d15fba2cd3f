"""mpc.pytorch 0.0.6's ``mpc.util``: batched linear algebra and trajectory helpers.

The batched products, for x, y [B, k] and X, Q [B, k, k]:

    bger(x, y) = x y'   [B, k, k]      bmv(X, y) = X y   [B, k]
    bquad(x, Q) = x'Qx  [B]            bdot(x, y) = x'y  [B]

``get_traj`` rolls controls u [T, B, m] out through a ``LinDx`` or a dynamics module from
x_init [B, n] (x_1 = x_init, x_{t+1} = f(x_t, u_t)), ``get_cost`` sums a ``QuadCost`` or a
cost module along a trajectory. Same names, arguments and shapes as mpc.pytorch; the
differences (errors instead of asserts, ``bdiag`` for any dtype, ``table_log`` on a logger)
are in docs/coming-from-mpc-pytorch.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.compat.problem import dynamics_step, quadratic_terms
from mpc_policy.compat.terms import LinDx, QuadCost
from mpc_policy.costs import QuadraticCost

__all__ = [
    "bdiag",
    "bdot",
    "bger",
    "bmv",
    "bquad",
    "data_maybe",
    "detach_maybe",
    "eclamp",
    "expandParam",
    "get_cost",
    "get_data_maybe",
    "get_traj",
    "jacobian",
    "table_log",
]

logger = logging.getLogger(__name__)
_seen_tables: set[str] = set()


def jacobian(f: Callable[[Tensor], Tensor], x: Tensor, eps: float) -> Tensor:
    """Central-difference Jacobian of a vector function at one point.

    Args:
        f: maps a vector (k,) to a vector (p,).
        x: (k,) or (1, k) the point.
        eps: the (absolute) step.

    Returns:
        (p, k) with column i = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).
    """
    if x.dim() == 2:
        if x.shape[0] != 1:
            raise ValueError(f"x: expected shape (k,) or (1, k), received {tuple(x.shape)}")
        x = x[0]
    basis = eps * torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    columns = [(f(x + e) - f(x - e)) / (2.0 * eps) for e in basis]
    return torch.stack(columns, dim=-1)


def expandParam(X: Tensor, n_batch: int, nDim: int) -> tuple[Tensor, bool]:
    """A term with nDim dimensions as it is, or one without its batch dimension expanded.

    Args:
        X: a scalar, a tensor with nDim dimensions, or one with nDim - 1 (no batch).
        n_batch: B.
        nDim: the number of dimensions of the batched term.

    Returns:
        The term, and whether it was expanded to [B, ...].
    """
    if X.dim() in (0, nDim):
        return X, False
    if X.dim() == nDim - 1:
        return X.unsqueeze(0).expand(n_batch, *X.shape), True
    raise ValueError(f"X: expected 0, {nDim - 1} or {nDim} dimensions, received {X.dim()}")


def bdiag(d: Tensor) -> Tensor:
    """[B, k] diagonals as [B, k, k] diagonal matrices (any dtype, any B and k)."""
    if d.dim() != 2:
        raise ValueError(f"d: expected shape (B, k), received {tuple(d.shape)}")
    return torch.diag_embed(d)


def bger(x: Tensor, y: Tensor) -> Tensor:
    """Outer products x y' [B, k, l] of x [B, k] and y [B, l]."""
    return x.unsqueeze(-1) * y.unsqueeze(-2)


def bmv(X: Tensor, y: Tensor) -> Tensor:
    """Products X y [B, k] of X [B, k, l] and y [B, l]."""
    return (X @ y.unsqueeze(-1)).squeeze(-1)


def bquad(x: Tensor, Q: Tensor) -> Tensor:
    """Quadratic forms x'Qx [B] of x [B, k] and Q [B, k, k]."""
    return (x * bmv(Q, x)).sum(-1)


def bdot(x: Tensor, y: Tensor) -> Tensor:
    """Inner products x'y [B] of x, y [B, k]."""
    return (x * y).sum(-1)


def eclamp(x: Tensor, lower: float | Tensor, upper: float | Tensor) -> Tensor:
    """Clamp x to [lower, upper] IN PLACE and return it (bounds: floats or x's shape)."""
    for name, bound in (("lower", lower), ("upper", upper)):
        if isinstance(bound, Tensor) and bound.shape != x.shape:
            raise ValueError(
                f"{name}: expected a float or shape {tuple(x.shape)} (x's), "
                f"received {tuple(bound.shape)}"
            )
    with torch.no_grad():
        low = torch.as_tensor(lower, dtype=x.dtype, device=x.device)
        high = torch.as_tensor(upper, dtype=x.dtype, device=x.device)
        x.copy_(torch.minimum(torch.maximum(x, low), high))
    return x


def get_data_maybe(x: Any) -> Any:
    """A tensor's data (detached, sharing storage); anything else unchanged."""
    return x.detach() if isinstance(x, Tensor) else x


def detach_maybe(x: Tensor | None) -> Tensor | None:
    """x detached if it requires grad; None stays None."""
    if x is None:
        return None
    return x.detach() if x.requires_grad else x


def data_maybe(x: Tensor | None) -> Tensor | None:
    """x's data (detached); None stays None."""
    return None if x is None else x.detach()


def table_log(tag: str, d: Sequence[tuple[Any, ...]]) -> None:
    """Log one row of a table (the header too, the first time a tag is seen).

    Args:
        tag: the table's name.
        d: (name, value) or (name, value, format) triples, e.g. ("cost", 1.5, "{:.2e}").
    """
    for entry in d:
        if len(entry) not in (2, 3):
            raise ValueError(
                f"d: expected (name, value) or (name, value, format) entries, received {entry!r}"
            )
    if tag not in _seen_tables:
        _seen_tables.add(tag)
        logger.info("| %s |", " | ".join(str(entry[0]) for entry in d))
    cells = [entry[2].format(entry[1]) if len(entry) == 3 else str(entry[1]) for entry in d]
    logger.info("| %s |", " | ".join(cells))


def get_traj(T: int, u: Tensor, x_init: Tensor, dynamics: LinDx | nn.Module) -> Tensor:
    """States [T, B, n] of controls u [T, B, m] rolled out from x_init [B, n] (no graph).

    Args:
        T: horizon.
        u: [T, B, m] controls.
        x_init: [B, n] initial states.
        dynamics: a ``LinDx`` (F [T-1, B, n, n+m] and f, in mpc.pytorch's forms) or a module
            dx(x [B, n], u [B, m]) -> [B, n].
    """
    x_t, u = get_data_maybe(x_init), get_data_maybe(u)
    step = dynamics_step(dynamics, T, x_t.shape[0], x_t.shape[1], x_t.shape[1] + u.shape[-1])
    xs = [x_t]
    with torch.no_grad():
        for t in range(T - 1):
            xs.append(step(xs[-1], u[t], t))
    return torch.stack(xs)


def get_cost(
    T: int,
    u: Tensor,
    cost: QuadCost | nn.Module,
    dynamics: LinDx | nn.Module | None = None,
    x_init: Tensor | None = None,
    x: Tensor | None = None,
) -> Tensor:
    """Total cost [B] of a trajectory, given by its states x [T, B, n] or by x_init.

    Args:
        T: horizon.
        u: [T, B, m] controls (the graph to u is kept; the cost terms are detached).
        cost: a ``QuadCost`` (C, c in mpc.pytorch's forms) or a module cost(tau [B, n+m]) -> [B].
        dynamics: needed with ``x_init``, to roll the states out.
        x_init: [B, n] initial states (when x is None).
        x: [T, B, n] states.
    """
    if x is None:
        if x_init is None or dynamics is None:
            raise ValueError("x: expected x, or x_init and dynamics to compute it; received None")
        x = get_traj(T, u, x_init, dynamics)
    tau = torch.cat([x, u], dim=-1)  # [T, B, n+m]
    if isinstance(cost, QuadCost):
        if cost.C is None:
            raise ValueError("cost.C: expected a tensor, received None")
        c_term = None if cost.c is None else cost.c.detach()
        terms = quadratic_terms(cost.C.detach(), c_term, T, tau.shape[1], tau.shape[-1])
        per_step = QuadraticCost(*terms)(x.transpose(0, 1), u.transpose(0, 1)).transpose(0, 1)
    else:
        per_step = torch.stack([cost(tau[t]) for t in range(T)])
    return per_step.sum(0)
