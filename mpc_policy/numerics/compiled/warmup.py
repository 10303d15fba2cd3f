"""Compile every kernel of the package ahead of its first use: ``mpc-policy warmup``.

A kernel compiles on its first call for each dtype, then loads from the on-disk cache
(``_cache``) in later processes. ``warmup`` makes those first calls on a tiny problem
(T = 3, B = 2, n = 2, m = 2), for every entry kernel that ``MPC`` and ``lqr_solve`` reach
(the Riccati recursion and its factorization, the whole bounded-LQR solve, the rollout of
affine dynamics, the implicit backward and the costates, the whole box-DDP solve with the
built-in systems' compiled models), so that a later process, the
command line's first solve or an SB3 rollout, starts without compiling. The kernels take the
problem data as contiguous arrays, so one call per dtype compiles the signature every solve
of that dtype uses."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from mpc_policy.numerics.compiled import adjoint, box_lqr, ddp, models, riccati, rollout
from mpc_policy.numerics.compiled._cache import cache_directory
from mpc_policy.options import MPCOptions

__all__ = ["WarmupReport", "describe", "warmup"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class WarmupReport(NamedTuple):
    """What ``warmup`` did for one dtype.

    Attributes:
        dtype: "float32" or "float64".
        seconds: wall-clock time of the calls (compiling, or loading from the cache).
        compiled: how many kernels were compiled (0: every one came from the cache).
        loaded: how many kernels were loaded from the on-disk cache.
    """

    dtype: str
    seconds: float
    compiled: int
    loaded: int


def _call_every_kernel(dtype: torch.dtype) -> None:
    T, B, n, m = 3, 2, 2, 2
    d = n + m
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(T, B, d, d, generator=generator, dtype=torch.float64)
    C = (A @ A.transpose(-1, -2) + torch.eye(d, dtype=torch.float64)).to(dtype)
    c = torch.randn(T, B, d, generator=generator, dtype=torch.float64).to(dtype)
    F = (0.5 * torch.randn(T - 1, B, n, d, generator=generator, dtype=torch.float64)).to(dtype)
    f = torch.zeros(T - 1, B, n, dtype=dtype)
    x_init = torch.ones(B, n, dtype=dtype)
    lower = torch.full((T, B, m), -0.5, dtype=dtype)
    upper = torch.full((T, B, m), 0.5, dtype=dtype)
    gains = riccati.backward_recursion(C, c, F, lower, upper)
    riccati.factorize(C, F, gains.free)
    alphas = 0.5 ** torch.arange(3, dtype=dtype)
    rollout.affine_rollout(F, f, x_init, gains.k, None, None, None, alphas, lower, upper)
    solved = box_lqr.solve_box_lqr(
        C, c, F, f, x_init, torch.zeros(T, B, m, dtype=dtype), lower, upper, alphas, MPCOptions()
    )
    tau = torch.cat([solved.x, solved.u], -1)
    # (adjoint.adjoint_solve alone is no solve's: the implicit backward holds its recursion)
    adjoint.costates_from_gradient(c, F)
    adjoint.implicit_gradients(solved.gains, C, c, F, tau, c, True, True, True)
    # the whole box-DDP loop with a compiled model (float64 arithmetic for every dtype: one
    # specialization serves both)
    empty = np.zeros((1, 1, 1, 1))
    twins = ddp.Twins(
        models.DYNAMICS_PENDULUM,
        np.array([[10.0], [1.0], [1.0]]),
        np.array([0.05, math.inf]),
        models.COST_QUADRATIC,
        np.eye(4).reshape(1, 1, 4, 4),
        np.zeros((1, 1, 4)),
        empty[0, 0, :1],
        np.zeros(3, dtype=np.int64),
        np.zeros(1),
    )
    start = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], dtype=dtype)
    bound = torch.full((T, B, 1), 2.0, dtype=dtype)
    ddp.solve_ddp(twins, start, torch.zeros(T, B, 1, dtype=dtype), -bound, bound, MPCOptions())


def _entry_kernels() -> list:
    return [
        riccati._recursion,
        riccati._factorize,
        rollout._rollout,
        box_lqr._solve,
        adjoint._costates,
        adjoint._implicit,
        ddp._solve,
    ]


def warmup(dtypes: Sequence[str] = ("float32", "float64")) -> list[WarmupReport]:
    """Compile (or load from the cache) every kernel ``MPC`` and ``lqr_solve`` can call.

    Args:
        dtypes: the dtypes to prepare, each "float32" or "float64".

    Returns:
        One report per dtype, in the order given.

    Raises:
        ValueError: an unknown dtype name.
    """
    for name in dtypes:
        if name not in _DTYPES:
            raise ValueError(f"dtypes: expected names among {tuple(_DTYPES)}, received {name!r}")
    reports = []
    for name in dtypes:
        before = _cache_counts()
        start = time.perf_counter()
        _call_every_kernel(_DTYPES[name])
        seconds = time.perf_counter() - start
        hits, misses = (after - was for after, was in zip(_cache_counts(), before))
        reports.append(WarmupReport(name, seconds, misses, hits))
    return reports


def _cache_counts() -> tuple[int, int]:
    """Cache hits and misses of the entry kernels so far in this process."""
    hits = misses = 0
    for kernel in _entry_kernels():
        hits += sum(kernel.stats.cache_hits.values())
        misses += sum(kernel.stats.cache_misses.values())
    return hits, misses


def describe(reports: Sequence[WarmupReport]) -> list[str]:
    """One line per report, and where the cache lives, for the command line."""
    lines = []
    for report in reports:
        if report.compiled:
            what = f"compiled {report.compiled} kernels"
            if report.loaded:
                what += f", loaded {report.loaded} from the cache"
        else:
            what = f"loaded {report.loaded} kernels from the cache"
        lines.append(f"{report.dtype}: {what} in {report.seconds:.1f} s")
    lines.append(f"cache: {cache_directory()}")
    return lines
