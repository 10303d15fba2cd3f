"""mpc.pytorch 0.0.6's ``mpc.torch_numdiff``: finite-difference gradients and Hessians.

For a network net(inputs [N, k]) -> [N] or [N, p], evaluated on all perturbed rows in one
call (rows i of the result belong to input row i):

    grad:  (net(x + eps/2 e_i) - net(x - eps/2 e_i)) / eps
    hess:  (net(x + eps e_i + eps e_j) - net(x + eps e_i - eps e_j)
            - net(x - eps e_i + eps e_j) + net(x - eps e_i - eps e_j)) / (4 eps^2)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mpc_policy.compat.problem import received

__all__ = ["grad", "hess"]


def _check(inputs: Tensor) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs: expected shape (N, k), received {received(inputs)}")


def _columns(values: Tensor, rows: int) -> Tensor:
    """Network outputs [rows] or [rows, p] as [rows, p]."""
    return values.reshape(rows, -1)


def grad(net: Callable[[Tensor], Tensor], inputs: Tensor, eps: float = 1e-4) -> Tensor:
    """Central-difference gradients of net at every row of inputs [N, k] (no graph).

    Returns:
        [N, k] for a scalar output per row, [N, k, p] for p outputs.
    """
    _check(inputs)
    N, k = inputs.shape
    x = inputs.detach()
    step = 0.5 * eps * torch.eye(k, dtype=x.dtype, device=x.device)
    plus = (x.unsqueeze(1) + step).reshape(N * k, k)
    minus = (x.unsqueeze(1) - step).reshape(N * k, k)
    with torch.no_grad():
        out = _columns(net(torch.cat([plus, minus])), 2 * N * k)
    g = ((out[: N * k] - out[N * k :]) / eps).reshape(N, k, -1)
    return g.squeeze(2) if g.shape[2] == 1 else g


def hess(net: Callable[[Tensor], Tensor], inputs: Tensor, eps: float = 1e-4) -> Tensor:
    """Finite-difference Hessians of net at every row of inputs [N, k] (no graph).

    Returns:
        [N, k, k] for a scalar output per row, [N, k, k, p] for p outputs.
    """
    _check(inputs)
    N, k = inputs.shape
    x = inputs.detach()
    e = eps * torch.eye(k, dtype=x.dtype, device=x.device)
    ei, ej = e.view(k, 1, k), e.view(1, k, k)
    corners = [ei + ej, ei - ej, -ei + ej, -ei - ej]  # each (k, k, k): (i, j, coordinate)
    rows = torch.cat([(x.view(N, 1, 1, k) + s).reshape(N * k * k, k) for s in corners])
    with torch.no_grad():
        out = _columns(net(rows), 4 * N * k * k)
    fpp, fpn, fnp, fnn = out.split(N * k * k)
    h = ((fpp - fpn - fnp + fnn) / (4.0 * eps * eps)).reshape(N, k, k, -1)
    return h.squeeze(3) if h.shape[3] == 1 else h
