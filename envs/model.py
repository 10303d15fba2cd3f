"""The base class of the systems' dynamics modules, with the tensor helpers they share.

Every system is a discrete-time model x_{t+1} = f(x_t, u_t) with a fixed step ``dt``,
callable on any leading batch shape, with a Jacobian d x_{t+1} / d [x_t; u_t]: analytic
where a subclass writes one (the built-in systems do), else from autograd (the default
``jacobian``), so a system of one's own needs only ``forward``.
The helpers check inputs, take the angle of a (cos, sin) pair with its derivatives, and
assemble a Jacobian from its entries.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SystemDynamics", "angle_and_partials", "check_inputs", "stack_jacobian"]


class SystemDynamics(nn.Module, ABC):
    """Base of the dynamics modules: ``forward(x (..., n), u (..., m)) -> (..., n)``.

    Attributes:
        n_state: state size n.
        n_ctrl: control size m.
        dt: time step (s) of one call.
    """

    n_state: ClassVar[int]
    n_ctrl: ClassVar[int]
    dt: float
    # True in the body of a class whose ``numpy_step`` equals its ``forward``: a subclass
    # inherits the method but not the promise (it may change forward), so it steps in torch
    numpy_step_exact: ClassVar[bool] = False

    def numpy_twin(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """``numpy_step`` where this very class declares it equal to ``forward``, else None.

        The environments step with it when it exists (no torch work per step); the torch
        module stays the reference it is tested against.
        """
        if type(self).__dict__.get("numpy_step_exact", False):
            return self.numpy_step
        return None

    def numpy_step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The next state (..., n) float64 for x (..., n), u (..., m) float64 arrays, in
        numpy, at the module's current parameter values; equal to ``forward`` to float
        precision. Not every system has one (see ``numpy_twin``)."""
        raise NotImplementedError(f"{type(self).__name__} has no numpy twin of its forward")

    def scalar_values(self, names: tuple[str, ...]) -> tuple[float, ...]:
        """The current values of the scalar parameters ``names`` as floats.

        Read again only when a parameter changed (its tensor or its in-place version
        counter: an optimizer step, ``load_state_dict``, ``copy_``), so a numpy step costs
        no tensor access when nothing changed.
        """
        registered = self._parameters
        tensors: list[Tensor] = []
        for name in names:
            tensor = registered.get(name)
            tensors.append(getattr(self, name) if tensor is None else tensor)
        key = [(id(t), t._version) for t in tensors]
        cache: dict[tuple[str, ...], tuple[object, tuple[float, ...]]]
        cache = self.__dict__.setdefault("_scalar_values", {})
        hit = cache.get(names)
        if hit is not None and hit[0] == key:
            return hit[1]
        values = tuple(float(t.detach()) for t in tensors)
        cache[names] = (key, values)
        return values

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Jacobian (..., n, n+m) of the next state with respect to [x; u].

        This default differentiates ``forward`` with reverse-mode autograd, one backward
        pass per state coordinate over all rows at once (rows are independent); a subclass
        may override it with an analytic one, which is faster. Under gradient mode the
        result keeps its graph (it is differentiable with respect to the parameters, x and
        u, as the MPC's exact gradients need); under ``torch.no_grad()`` or
        ``torch.inference_mode()`` (the solver's forward iterations) it is detached.

        Args:
            x: (..., n) states.
            u: (..., m) controls, broadcastable with x over the leading shape.
        """
        keep_graph = torch.is_grad_enabled()
        shape = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
        with torch.inference_mode(False), torch.enable_grad():
            rows = []
            for tensor in (x, u):
                row = tensor.expand(*shape, tensor.shape[-1])
                rows.append(
                    row.clone()
                    if keep_graph and row.requires_grad
                    else row.detach().clone().requires_grad_(True)
                )
            x_rows, u_rows = rows
            out = self(x_rows, u_rows)
            jacobian_rows = []
            for i in range(out.shape[-1]):
                grads = torch.autograd.grad(
                    out[..., i].sum(),
                    (x_rows, u_rows),
                    retain_graph=True,
                    create_graph=keep_graph,
                    allow_unused=True,
                )
                jacobian_rows.append(
                    torch.cat(
                        [torch.zeros_like(r) if g is None else g for g, r in zip(grads, rows)],
                        dim=-1,
                    )
                )
        jacobian = torch.stack(jacobian_rows, dim=-2)
        return jacobian if keep_graph else jacobian.detach()


def stack_columns(columns: tuple[np.ndarray, ...]) -> np.ndarray:
    """(..., k) float64 array of k arrays (...) (np.stack's result, a few times faster on the
    tiny arrays of one environment step)."""
    out = np.empty((*np.shape(columns[0]), len(columns)))
    for i, column in enumerate(columns):
        out[..., i] = column
    return out


def clip(value: np.ndarray, bound: float) -> np.ndarray:
    """value clipped to [-bound, bound] (np.clip's result, faster on tiny arrays)."""
    return np.minimum(np.maximum(value, -bound), bound)


def in_dtype(dtype: torch.dtype, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The scalar parameters in ``dtype`` (those already in it as they are, with no call)."""
    return tuple(p if p.dtype == dtype else p.to(dtype) for p in params)


def check_inputs(name: str, x: Tensor, u: Tensor, n_state: int, n_ctrl: int) -> torch.Size:
    """Validate x (..., n_state), u (..., n_ctrl) and return their broadcast batch shape."""
    for arg, tensor, size in (("x", x, n_state), ("u", u, n_ctrl)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, received {type(tensor)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name}: {arg} must be floating point, received {tensor.dtype}")
        if tensor.dim() == 0 or tensor.shape[-1] != size:
            raise ValueError(
                f"{name}: expected {arg} of shape (..., {size}), received {tuple(tensor.shape)}"
            )
    if x.dtype != u.dtype:
        raise TypeError(f"{name}: x and u must share a dtype, received {x.dtype} and {u.dtype}")
    if x.shape[:-1] == u.shape[:-1]:
        return x.shape[:-1]
    try:
        return torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
    except RuntimeError as error:
        raise ValueError(
            f"{name}: the batch shapes of x {tuple(x.shape)} and u {tuple(u.shape)} "
            "do not broadcast"
        ) from error


def angle_and_partials(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """theta = atan2(sin, cos) and its derivatives with respect to cos and sin.

    The dynamics depend on the state's angle only, so a (cos, sin) pair off the unit circle
    is projected onto it; these derivatives are those of that projection.
    """
    theta = torch.atan2(sin, cos)
    radius2 = cos * cos + sin * sin
    return theta, -sin / radius2, cos / radius2


def stack_jacobian(rows: list[list[Tensor | float]], shape: torch.Size, like: Tensor) -> Tensor:
    """Assemble a (*shape, len(rows), len(rows[0])) Jacobian from scalar or tensor entries."""

    def entry(value: Tensor | float) -> Tensor:
        if isinstance(value, Tensor):
            return value.expand(shape)
        return torch.full(shape, value, dtype=like.dtype, device=like.device)

    return torch.stack([torch.stack([entry(v) for v in row], dim=-1) for row in rows], dim=-2)
