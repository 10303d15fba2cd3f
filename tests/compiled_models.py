"""Calls into the compiled models' kernels for the tests that compare them with autograd.

The model kernels (``mpc_policy.numerics.compiled.models``) have no Python entry: only other
kernels call them (``_cache.kernel``). ``model_calls`` is such a kernel, compiled here."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _kernel() -> Any:
    import numba

    from mpc_policy.numerics.compiled import models

    @numba.njit
    def step_jacobian_curvature(kind, p, c, xs, us, lams, F, H, w_row, th_row, code, work):
        models.dynamics_step(kind, p, c, 0, xs, us, 0, code, work)
        models.dynamics_jacobian(kind, p, c, 0, xs, us, 0, F, w_row, th_row, code, work)
        models.dynamics_curvature(kind, p, c, 0, xs, us, 0, lams, H, w_row, th_row, code, work)

    return step_jacobian_curvature


def model_calls(
    kind: int,
    p: np.ndarray,
    c: np.ndarray,
    xs: np.ndarray,
    us: np.ndarray,
    lams: np.ndarray,
    F: np.ndarray,
    H: np.ndarray,
    w_row: np.ndarray,
    th_row: np.ndarray,
    code: np.ndarray,
    work: np.ndarray,
) -> None:
    """The model's step (into xs[1]), Jacobian (into F[0, 0]) and curvature along lams[1]
    (into H[0, 0]) at (xs[0], us[0]), element 0, step 0; arguments as the kernels take them."""
    _kernel()(kind, p, c, xs, us, lams, F, H, w_row, th_row, code, work)
