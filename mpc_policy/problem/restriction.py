"""Restricting the user's modules to some elements of a batch.

The solver calls the cost and the dynamics on the elements that still need them (the rest of
a solve once half the batch has converged, the finite rows of a gradient): a module with
per-element data restricts itself (``select_batch(index)``); any other module is shared by
the batch, unless it holds a tensor whose leading dimension is the batch size, which may be
per-element data the solver cannot see: it is then called on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["holds_batch", "on_rows", "restrict", "restrictable"]


@contextmanager
def on_rows(index: Tensor | None, batch: int) -> Iterator[None]:
    """Errors raised while modules run on the elements ``index`` (k,) of a batch of B only
    get a note saying so (a module with per-element parameters needs ``select_batch``)."""
    try:
        yield
    except Exception as error:
        if index is not None and hasattr(error, "add_note"):
            error.add_note(
                f"the solver evaluated the cost and the dynamics on {index.numel()} of the "
                f"{batch} batch elements (the others are NONFINITE); a module with "
                "per-element parameters needs a select_batch(index) method "
                "(mpc_policy.problem.restriction)"
            )
        raise


def restrict(module: nn.Module, index: Tensor) -> nn.Module:
    """The module restricted to the batch elements ``index`` (k,).

    A module with per-batch-element parameters provides ``select_batch(index)``; any other
    module is shared by all elements and returned as it is.
    """
    select = getattr(module, "select_batch", None)
    if callable(select):
        selected: nn.Module = select(index)
        return selected
    return module


def _tensors(module: object, seen: set[int]) -> Iterator[Tensor]:
    """Every tensor a module holds: parameters, buffers and tensor attributes, recursively."""
    if id(module) in seen:
        return
    seen.add(id(module))
    if isinstance(module, nn.Module):
        yield from module.parameters(recurse=False)
        yield from module.buffers(recurse=False)
        for child in module.children():
            yield from _tensors(child, seen)
    for value in vars(module).values() if hasattr(module, "__dict__") else ():
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, nn.Module):
            yield from _tensors(value, seen)


@contextmanager
def _ordinary_tensors() -> Iterator[None]:
    """Inside a solve's inference mode: make ordinary tensors, without a graph. A module
    restricted there is differentiated later (its local models), and an inference tensor
    cannot be saved for backward; the solve needs no graph to its parameters."""
    if not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False), torch.no_grad():
        yield


def restrictable(module: Callable[..., Any], batch: int, index: Tensor) -> Any | None:
    """The module for the batch elements ``index`` (k,) of B = ``batch``, or None when the
    solver cannot tell that it is right for a part of the batch.

    A module with ``select_batch`` gives its own restriction. A module holding a tensor
    whose first dimension is B (B > 1, or any B when ``index`` repeats elements, as the
    line search's candidates do) may hold per-element data without saying so: None, and the
    solver keeps evaluating it on the whole batch. Any other module is shared by all elements
    and serves as it is.
    """
    select = getattr(module, "select_batch", None)
    if callable(select):
        with _ordinary_tensors():
            return select(index)
    suspect = batch > 1 or index.numel() > batch
    if suspect and any(t.dim() > 0 and t.shape[0] == batch for t in _tensors(module, set())):
        return None
    return module


def holds_batch(module: object, batch: int) -> bool:
    """Whether a module holds a tensor whose leading dimension is ``batch``."""
    return any(t.dim() > 0 and t.shape[0] == batch for t in _tensors(module, set()))
