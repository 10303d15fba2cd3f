"""mpc.pytorch-style cost and dynamics modules as the modules ``mpc_policy.MPC`` calls.

mpc.pytorch calls a dynamics module on one batch of rows, ``dx(x (N, n), u (N, m)) -> (N, n)``,
and, with ``GradMethods.ANALYTIC``, asks it for the Jacobian blocks

    R, S = dx.grad_input(x (N, n), u (N, m)),   R = d x_next / d x (N, n, n),
                                                 S = d x_next / d u (N, n, m)

right after calling it on the same rows (its ``NNDynamics`` caches activations in the call).
A non-quadratic cost module maps rows tau = [x; u] (N, n+m) to costs (N,). ``mpc_policy``
calls dynamics on rows (N, n) and costs on (B, T, n) (``mpc_policy.problem.contract``), and reads
Jacobians from ``jacobian(x, u) -> (N, n, n+m)``: the wrappers below also take any leading
shape and flatten it into rows and back, so a module written for mpc.pytorch runs unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RowCost", "RowDynamics", "has_jacobian"]


def has_jacobian(dynamics: nn.Module) -> bool:
    """Whether a dynamics module gives its Jacobian (``grad_input`` or ``jacobian``)."""
    return callable(getattr(dynamics, "grad_input", None)) or callable(
        getattr(dynamics, "jacobian", None)
    )


def _rows(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    """x (..., n), u (..., m) as rows (N, n), (N, m), and the broadcast leading shape."""
    lead = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
    x_rows = x.expand(*lead, x.shape[-1]).reshape(-1, x.shape[-1])
    u_rows = u.expand(*lead, u.shape[-1]).reshape(-1, u.shape[-1])
    return x_rows, u_rows, lead


class RowDynamics(nn.Module):
    """A row-wise dynamics module ``dx(x (N, n), u (N, m)) -> (N, n)`` on any leading shape.

    Args:
        dynamics: the mpc.pytorch-style module; its Jacobian, when asked for, comes from its
            ``grad_input(x, u)`` (or from a ``jacobian(x, u)`` method, mpc_policy's form).
    """

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next state (..., n) for x (..., n), u (..., m)."""
        x_rows, u_rows, lead = _rows(x, u)
        out = self.dynamics(x_rows, u_rows)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(x_rows.shape):
            received = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"dx: expected dx(x, u) to return the next states of shape (N, n) = "
                f"{tuple(x_rows.shape)} for x of shape {tuple(x_rows.shape)}, received {received}"
            )
        return out.reshape(*lead, x.shape[-1])

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Jacobian (..., n, n+m) of the next state with respect to [x; u]."""
        x_rows, u_rows, lead = _rows(x, u)
        n, m = x.shape[-1], u.shape[-1]
        grad_input = getattr(self.dynamics, "grad_input", None)
        if callable(grad_input):
            self.dynamics(x_rows, u_rows)  # grad_input may read what this call caches
            R, S = grad_input(x_rows, u_rows)
            J = torch.cat([R.expand(x_rows.shape[0], n, n), S.expand(x_rows.shape[0], n, m)], -1)
        elif callable(jacobian := getattr(self.dynamics, "jacobian", None)):
            J = jacobian(x_rows, u_rows)
        else:
            raise TypeError(
                f"dx: GradMethods.ANALYTIC needs a grad_input(x, u) method returning the "
                f"Jacobian blocks (R, S); {type(self.dynamics).__name__} has none (pass "
                "grad_method=GradMethods.AUTO_DIFF or GradMethods.FINITE_DIFF)"
            )
        return J.reshape(*lead, n, n + m)


class RowCost(nn.Module):
    """A row-wise cost module ``cost(tau (N, n+m)) -> (N,)`` as cost(x, u) -> (B, T).

    mpc.pytorch calls it once per time step on (B, n+m); here it is called once on all
    B*T rows, which is the same for a cost that treats rows independently (as it must: the
    same module serves every step). It must be time-invariant, as in mpc.pytorch.

    Args:
        cost: the mpc.pytorch-style module.
    """

    def __init__(self, cost: nn.Module) -> None:
        super().__init__()
        self.cost = cost

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for x (B, T, n), u (B, T, m)."""
        tau = torch.cat([x, u], dim=-1)
        out = self.cost(tau.reshape(-1, tau.shape[-1]))
        if not isinstance(out, Tensor) or out.numel() != tau.shape[:-1].numel():
            received = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"cost: expected cost(tau) to return one value per row, shape (N,) = "
                f"({tau.shape[:-1].numel()},), received {received}"
            )
        return out.reshape(tau.shape[:-1])
