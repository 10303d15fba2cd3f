"""mpc.pytorch (PyPI ``mpc`` 0.0.6) as the reference solver, called on our batch-first data.

mpc.pytorch is optional: it pins numpy<2, so it lives in its own virtual environment
(``.venv-bench``). ``load()`` returns None when it is not importable and the benchmarks then
time our solver alone. Two known defects are worked around before anything is timed:

* its backward crashes when batch size x control size is 1 with bounds, because
  ``mpc.util.bdiag`` indexes with a uint8 mask; it is replaced by ``torch.diag_embed``;
* its defaults (``lqr_iter=10``, ``eps=1e-7``) do not converge in float32, so callers pass
  settings that do, and report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from _problems import BoxLQRProblem
from torch import Tensor, nn

__all__ = ["ReferenceSettings", "load", "solve_reference", "time_major"]


@dataclass(frozen=True)
class ReferenceSettings:
    """The mpc.pytorch ``MPC`` arguments a benchmark uses (reported with its results)."""

    lqr_iter: int
    eps: float
    linesearch_decay: float = 0.2
    max_linesearch_iter: int = 10
    autodiff_dynamics: bool = False


def _bdiag(d: Tensor) -> Tensor:
    """Replacement for ``mpc.util.bdiag``: (B, k) -> (B, k, k) diagonal matrices."""
    return torch.diag_embed(d)


def load() -> ModuleType | None:
    """Import mpc.pytorch and patch ``mpc.util.bdiag``; None if it is not installed."""
    try:
        import mpc
        import mpc.mpc
        import mpc.util
    except ImportError:
        return None
    mpc.util.bdiag = _bdiag
    return mpc


def time_major(t: Tensor) -> Tensor:
    """(B, T, ...) -> (T, B, ...), contiguous."""
    return t.transpose(0, 1).contiguous()


def solve_reference(
    mpc_module: ModuleType,
    problem: BoxLQRProblem,
    settings: ReferenceSettings,
    dynamics: nn.Module | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve with mpc.pytorch and return batch-first results.

    Args:
        mpc_module: the module returned by ``load()``.
        problem: batch-first problem data; ``F``/``f`` are used when ``dynamics`` is None.
        settings: the reference solver's iteration limit, tolerance and line search.
        dynamics: nonlinear dynamics module taking (B, n), (B, m) -> (B, n), or None.

    Returns:
        x (B, T, n), u (B, T, m) and the cost of the best iterate (B,); x and u carry the
        autograd graph back to the problem data.
    """
    B, T, n_tau = problem.c.shape
    n = problem.x_init.shape[-1]
    m = n_tau - n
    module = mpc_module.mpc
    grad_method = (
        module.GradMethods.AUTO_DIFF if settings.autodiff_dynamics else module.GradMethods.ANALYTIC
    )
    solver = module.MPC(
        n,
        m,
        T,
        u_lower=time_major(problem.u_lower),
        u_upper=time_major(problem.u_upper),
        lqr_iter=settings.lqr_iter,
        eps=settings.eps,
        linesearch_decay=settings.linesearch_decay,
        max_linesearch_iter=settings.max_linesearch_iter,
        grad_method=grad_method,
        exit_unconverged=False,
        detach_unconverged=False,
        verbose=-1,
        n_batch=B,
    )
    cost = module.QuadCost(time_major(problem.C), time_major(problem.c))
    if dynamics is None:
        assert problem.F is not None and problem.f is not None
        dynamics = module.LinDx(time_major(problem.F), time_major(problem.f))
    x, u, costs = solver(problem.x_init, cost, dynamics)
    return x.transpose(0, 1), u.transpose(0, 1), costs
