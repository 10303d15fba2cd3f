"""Input checks shared by the solver's public entry points.

Every check raises a ``ValueError`` or ``TypeError`` that names the argument, what was
expected and what was received, before any computation starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_bounds",
    "check_device",
    "check_finite",
    "check_same_kind",
    "check_tensor",
    "check_untransformed",
    "complete_bounds",
    "expand_batched",
    "expand_bound",
    "scalar_bounds_valid",
]


def check_tensor(name: str, value: object) -> Tensor:
    """``value`` must be a float32 or float64 tensor (half precision is refused)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, received dtype {value.dtype}")
    transform = _transform(value)
    if transform is not None:
        raise TypeError(
            f"{name}: received a tensor of {transform}, which the solver does not support "
            "(its solve runs data-dependent loops in inference mode and compiled kernels); "
            "batch the problems along B instead of vmap, and take derivatives with "
            "torch.autograd.grad or torch.autograd.functional.jacobian"
        )
    if value.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"{name}: expected dtype torch.float32 or torch.float64, received {value.dtype}: "
            "the solver's factorizations and tolerances need at least single precision; "
            "convert with .float() (and the result back with .to(dtype) if needed)"
        )
    return value


def _transform(value: Tensor) -> str | None:
    """The torch.func transform a tensor is wrapped by, as text; None for a plain tensor."""
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is None or not functorch.is_functorch_wrapped_tensor(value):
        return None
    if functorch.is_batchedtensor(value):
        return "torch.func.vmap"
    return "a torch.func transform (grad, jacrev, jacfwd, vjp or jvp)"


def _inside_transform() -> bool:
    """Whether a torch.func transform is running (only then can a module hold its tensors,
    through ``functional_call``): outside, the scan of the module's tensors is skipped."""
    functorch = getattr(torch._C, "_functorch", None)
    level = getattr(functorch, "maybe_current_level", None)
    return level is None or level() is not None


def check_untransformed(name: str, module: object) -> None:
    """A module's parameters and buffers must not be tensors of a torch.func transform
    (``torch.func.functional_call`` under ``grad`` or ``vmap``)."""
    if not isinstance(module, torch.nn.Module) or not _inside_transform():
        return
    for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
        transform = _transform(tensor)
        if transform is not None:
            raise TypeError(
                f"{name}: its tensor {key!r} is a tensor of {transform}, which the solver does "
                "not support (its solve runs data-dependent loops in inference mode and "
                "compiled kernels); take derivatives with torch.autograd.grad or "
                "torch.autograd.functional.jacobian"
            )


def check_device(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    """All tensors are on the reference's device."""
    for name, tensor in others.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(
                f"{name}: expected device {reference.device} (the device of "
                f"{reference_name}), received {tensor.device}"
            )


def check_same_kind(reference_name: str, reference: Tensor, **others: Tensor | None) -> None:
    """All tensors share the reference's dtype and device."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tensor.dtype != reference.dtype:
            raise TypeError(
                f"{name}: expected dtype {reference.dtype} (the dtype of {reference_name}), "
                f"received {tensor.dtype}"
            )
        if tensor.device != reference.device:
            raise ValueError(
                f"{name}: expected device {reference.device} (the device of "
                f"{reference_name}), received {tensor.device}"
            )


def all_finite(tensor: Tensor) -> bool:
    """Whether a tensor has no NaN or Inf: through numpy for a plain CPU tensor without a
    graph (one call, against the five tensor operations of ``torch.isfinite(t).all()``),
    through torch for any other (a graph, another device, a transform's tensor)."""
    if tensor.device.type == "cpu" and not tensor.requires_grad and _transform(tensor) is None:
        try:
            return bool(np.isfinite(tensor.numpy()).all())
        except (RuntimeError, TypeError):  # a layout or view numpy cannot see
            pass
    return bool(torch.isfinite(tensor).all())


def check_finite(**tensors: Tensor | None) -> None:
    """No NaN or Inf in the problem data."""
    for name, tensor in tensors.items():
        if tensor is not None and not all_finite(tensor):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
            raise ValueError(f"{name}: contains {bad} values; the problem data must be finite")


def _shape_text(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def expand_batched(name: str, value: Tensor, batch: int, shape: Sequence[int]) -> Tensor:
    """Broadcast a term given with or without its leading batch dimension.

    Args:
        name: argument name for messages.
        value: (B, *shape) or (*shape) tensor.
        batch: the batch size B.
        shape: the expected shape after the batch dimension.

    Returns:
        (B, *shape) view (no copy when the batch dimension was absent).
    """
    shape = tuple(shape)
    if tuple(value.shape) == shape:
        return value.expand(batch, *shape)
    if value.dim() == len(shape) + 1 and tuple(value.shape[1:]) == shape:
        if value.shape[0] == batch:
            return value
        if value.shape[0] == 1:
            return value.expand(batch, *shape)
    raise ValueError(
        f"{name}: expected shape {_shape_text((batch, *shape))} or {_shape_text(shape)}, "
        f"received {_shape_text(tuple(value.shape))}"
    )


def expand_bound(
    name: str,
    value: float | Tensor | None,
    batch: int,
    horizon: int,
    n_ctrl: int,
    like: Tensor,
) -> Tensor | None:
    """A control bound as (B, T, m); None stays None.

    From a float, (m,), (B, m), or a 3-D tensor that broadcasts to (B, T, m): (B, T, m),
    (1, T, m) per time step, (B, 1, m) per element. A (B, m) tensor when B == T could also
    mean (T, m): that is an error asking for the 3-D form.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Tensor | int | float):
        kind = type(value)
        if kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0:
            value = float(value)
        else:
            raise TypeError(
                f"{name}: expected a float, a torch.Tensor or None, received "
                f"{kind.__module__}.{kind.__name__} (convert arrays with torch.as_tensor)"
            )
    if isinstance(value, int | float):
        # made here (inside a torch.func transform it would be the transform's tensor)
        value = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    else:
        value = check_tensor(name, value)
    check_same_kind("x_init", like, **{name: value})
    if value.dim() == 0:
        return value.expand(batch, horizon, n_ctrl)
    if value.dim() == 1 and value.shape[0] == n_ctrl:
        return value.expand(batch, horizon, n_ctrl)
    if value.dim() == 2 and tuple(value.shape) == (batch, n_ctrl):
        if batch == horizon and batch > 1:
            raise ValueError(
                f"{name}: shape {_shape_text(tuple(value.shape))} is ambiguous with B = T = "
                f"{batch}: (B, m), one bound per batch element, or (T, m), one per time step; "
                f"pass ({batch}, 1, {n_ctrl}) for per-element bounds or (1, {horizon}, "
                f"{n_ctrl}) for per-time-step bounds"
            )
        return value.unsqueeze(1).expand(batch, horizon, n_ctrl)
    if value.dim() == 3 and value.shape[0] in (1, batch) and value.shape[1] in (1, horizon):
        if value.shape[2] == n_ctrl:
            return value.expand(batch, horizon, n_ctrl)
    raise ValueError(
        f"{name}: expected a float or a tensor of shape (m,) = ({n_ctrl},), "
        f"(B, m) = ({batch}, {n_ctrl}), (B, T, m) = ({batch}, {horizon}, {n_ctrl}), "
        f"(1, T, m) or (B, 1, m), received shape {_shape_text(tuple(value.shape))}"
        + _bound_hint(tuple(value.shape), batch, horizon, n_ctrl)
    )


def _bound_hint(shape: tuple[int, ...], batch: int, horizon: int, n_ctrl: int) -> str:
    if shape == (horizon, n_ctrl):
        return f" (for one bound per time step pass shape (1, {horizon}, {n_ctrl}))"
    if shape == (horizon, batch, n_ctrl) and horizon != batch:
        return " (time-major? bounds are batch first: (B, T, m))"
    return ""


def check_bounds(lower: Tensor | None, upper: Tensor | None) -> None:
    """lower <= upper everywhere, and no NaN (infinite bounds are allowed)."""
    for name, bound in (("u_lower", lower), ("u_upper", upper)):
        if bound is not None and bool(torch.isnan(bound).any()):
            raise ValueError(f"{name}: contains NaN values")
    for name, bound, sign in (("u_lower", lower, 1.0), ("u_upper", upper, -1.0)):
        # a lower bound of +inf (or an upper one of -inf) admits no control at all
        if bound is not None and bool((bound == sign * float("inf")).any()):
            index = tuple(torch.nonzero(bound == sign * float("inf"))[0].tolist())
            raise ValueError(
                f"{name}: {float(bound[index]):g} at index (batch, time, control) = {index} "
                "admits no control; use -inf for no lower bound and +inf for no upper bound"
            )
    if lower is not None and upper is not None:
        bad = lower > upper
        if bool(bad.any()):
            index = tuple(torch.nonzero(bad)[0].tolist())
            raise ValueError(
                f"u_lower must not exceed u_upper: at index (batch, time, control) = {index}, "
                f"u_lower = {float(lower[index]):g} > u_upper = {float(upper[index]):g}"
            )


def scalar_bounds_valid(lower: object, upper: object) -> bool:
    """Whether bounds given as Python numbers (or None) pass ``check_bounds``, decided
    without a tensor operation; False for tensors and for invalid numbers (``check_bounds``
    then runs and names the problem)."""
    for bound in (lower, upper):
        if bound is not None and (type(bound) not in (int, float) or bound != bound):
            return False
    if lower is not None and lower == float("inf"):
        return False
    if upper is not None and upper == float("-inf"):
        return False
    return lower is None or upper is None or lower <= upper  # type: ignore[operator]


def complete_bounds(
    lower: Tensor | None, upper: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """A one-sided box gets an infinite other side, so every layer sees both or neither."""
    if lower is None and upper is not None:
        lower = torch.full_like(upper, float("-inf"))
    elif upper is None and lower is not None:
        upper = torch.full_like(lower, float("inf"))
    return lower, upper
