"""Tensors in, numpy arrays out, for the kernels: views without copies where possible."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["as_array", "as_strided"]


def as_array(z: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor z (any shape), copied only when it is not contiguous.

    A kernel call converts a dozen tensors: checking the flags first avoids the tensor
    operations (``detach``, ``contiguous``) that a plain conversion would dispatch.
    """
    if z.requires_grad:
        z = z.detach()
    if not z.is_contiguous():
        z = z.contiguous()
    return z.numpy()


def as_strided(z: Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor z with z's strides (an expanded or transposed view
    stays one: no copy, no tensor operation but a ``detach`` where z requires grad); for a
    caller that copies it anyway (``np.array``)."""
    if z.requires_grad:
        z = z.detach()
    return z.numpy()
