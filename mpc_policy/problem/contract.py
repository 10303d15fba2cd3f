"""The solver's contract with user models: how it calls them and what it accepts back.

    dynamics(x (N, n), u (N, m))            -> x_next (N, n)
    dynamics.jacobian(x (N, n), u (N, m))   -> (N, n, n+m)          (optional)
    cost(x (B, T, n), u (B, T, m))          -> per-step cost (B, T)
    cost.quadratize(x, u)                   -> ((B, T, d, d), (B, T, d))  (optional)

A dynamics model is always called on ONE row dimension: the solver's leading dimensions
(time steps, line-search candidates, finite-difference points, then the batch) are flattened
into N rows with the batch index fastest, so row r belongs to batch element r mod B. Then
``x[:, i]`` and ``x[..., i]`` mean the same thing. A model whose parameters have the batch
dimension ((B,) or (B, 1): one mass per element) and fails on (N, n) rows is called on
(K, B, n) rows instead, where such parameters broadcast against ``x[..., i]`` (K, B);
a model may also read its rows as ``x.view(-1, B, n)`` itself.

Every return is checked for its type, shape and dtype, with an error that names the module,
the expected and the received. Values are not checked here: a row that turns non-finite is
data (``Status.NONFINITE``), found and isolated by the solver.

A module whose parameters are per batch element can define ``select_batch(index)``, returning
the module restricted to those elements; the solver uses it to take non-finite elements out of
the gradient (``restrict``). Without it, a module is assumed to treat rows independently with
parameters shared by the whole batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mpc_policy.problem.restriction import holds_batch

__all__ = [
    "CheckedCost",
    "CheckedDynamics",
    "check_declared_sizes",
    "determinism_hint",
    "in_place_error",
    "module_name",
]


def module_name(module: object) -> str:
    """The class name of a user module, for messages."""
    return type(module).__name__


def _received(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items (return one tensor)"
    kind = type(value)
    if kind.__module__ == "numpy":
        return (
            f"numpy.{kind.__name__} (compute with torch inside the module: the solver "
            "differentiates it)"
        )
    return f"{kind.__module__}.{kind.__name__}"


def _call(name: str, function: Callable[..., Any], *args: Tensor) -> Any:
    """Call a user module; an error it raises gets a note of who was called on what, and an
    in-place update that autograd cannot follow becomes an error naming the module."""
    try:
        return function(*args)
    except RuntimeError as error:
        named = in_place_error(name, error)
        if named is not None:
            raise named from error
        _note(error, name, args)
        raise
    except Exception as error:
        _note(error, name, args)
        raise


def in_place_error(name: str, error: RuntimeError) -> ValueError | None:
    """The error for a user module whose in-place update autograd cannot follow (None when
    ``error`` is about something else)."""
    text = str(error)
    if "inplace" not in text.lower() and "in-place" not in text.lower():
        return None
    return ValueError(
        f"{name} updated a tensor in place in a way autograd cannot follow ({text}); compute "
        "the result out of place (x = x + dx rather than x += dx or x.copy_(...); torch.stack "
        "the components rather than assigning x[:, i] = ...)"
    )


def _note(error: Exception, name: str, args: tuple[Tensor, ...]) -> None:
    if hasattr(error, "add_note"):  # Python >= 3.11
        shapes = ", ".join(str(tuple(a.shape)) for a in args)
        error.add_note(f"raised by {name}, called by the MPC solver on shapes {shapes}")


class _InputGuard:
    """Calls a user function so that an update of its inputs in place changes nothing of the
    caller's or the solver's storage.

    The first call runs on copies and compares them with the originals afterwards: a function
    that wrote into them runs on copies from then on, any other on the originals (no copy
    per call for the usual, out-of-place module). The verdict is kept with the module (its
    ``kind`` of call: "forward", "jacobian", "quadratize"), so a later solve with the same
    module does not copy and compare again.
    """

    def __init__(
        self, name: str, function: Callable[..., Any], owner: object = None, kind: str = ""
    ) -> None:
        self.name, self.function = name, function
        self.owner, self.kind = owner, kind
        verdicts = _verdicts_of(owner)
        self.copies: bool | None = None if verdicts is None else verdicts.get(kind)

    def __call__(self, *args: Tensor) -> Any:
        if self.copies is False:
            return _call(self.name, self.function, *args)
        copies = tuple(a.clone() for a in args)
        out = _call(self.name, self.function, *copies)
        if self.copies is None:
            self.copies = not all(_unchanged(a, c) for a, c in zip(args, copies, strict=True))
            verdicts = _verdicts_of(self.owner, create=True)
            if verdicts is not None:
                verdicts[self.kind] = self.copies
        return out


# the guards' verdicts per user module (weakly held: a module's verdicts go with it)
_VERDICTS: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _verdicts_of(owner: object, create: bool = False) -> dict[str, bool] | None:
    """The verdicts kept for ``owner`` (None when there is no owner or it cannot be held
    weakly)."""
    if owner is None:
        return None
    try:
        verdicts = _VERDICTS.get(owner)
        if verdicts is None and create:
            verdicts = _VERDICTS[owner] = {}
    except TypeError:  # not weakly referenceable (or unhashable): decide per solve
        return None
    return verdicts


def _unchanged(original: Tensor, copy: Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.equal(original, copy))


def _fits(value: object, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """The fast test of every call (messages are built only when it fails)."""
    return isinstance(value, Tensor) and value.shape == shape and value.dtype == dtype


def _check_output(
    what: str, value: object, shape: tuple[int, ...], dtype: torch.dtype, call: str, hint: str
) -> Tensor:
    """``value`` must be a tensor of exactly ``shape`` and ``dtype``."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{what}: expected {call} to return a tensor of shape {shape}, "
            f"received {_received(value)}"
        )
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{what}: expected {call} to return shape {shape}, received shape "
            f"{tuple(value.shape)}{hint}"
        )
    if value.dtype != dtype:
        raise TypeError(
            f"{what}: expected {call} to return dtype {dtype} (the dtype of its inputs), "
            f"received {value.dtype}"
        )
    return value


def check_declared_sizes(dynamics: object, n_state: int, n_ctrl: int) -> None:
    """A dynamics module's own integer ``n_state`` / ``n_ctrl`` must match the solver's."""
    for name, size in (("n_state", n_state), ("n_ctrl", n_ctrl)):
        declared = getattr(dynamics, name, None)
        if isinstance(declared, int) and not isinstance(declared, bool) and declared != size:
            raise ValueError(
                f"{name}: the MPC was built with {name}={size}, but dynamics "
                f"({module_name(dynamics)}) has {name} = {declared}"
            )


class CheckedDynamics:
    """A dynamics module called on flattened rows, with its returns checked.

    A module whose parameters have the batch dimension (one mass per element, (B,) or
    (B, 1)) cannot broadcast them against N = K B rows: when a call on (N, n) rows fails and
    the module holds a tensor whose leading dimension is B, it is called on rows shaped
    (K, B, n) instead, where they broadcast, and so on from then on.

    Args:
        module: the user's dynamics, dynamics(x (N, n), u (N, m)) -> (N, n), or on
            (K, B, n), (K, B, m) -> (K, B, n) when its parameters are per element.
        n_state: n, as declared to the solver.
        n_ctrl: m, as declared to the solver.
        batch: B, the batch size of the rows it is called on (None: unknown).
    """

    def __init__(
        self, module: Callable[..., Any], n_state: int, n_ctrl: int, batch: int | None = None
    ) -> None:
        self.module, self.n_state, self.n_ctrl = module, n_state, n_ctrl
        self.batch, self.batch_rows = batch, False
        self.name = f"dynamics ({module_name(module)})"
        jacobian = getattr(module, "jacobian", None)  # once: a miss raises inside nn.Module
        self.jacobian = self._jacobian if callable(jacobian) else None
        self._forward = _InputGuard(self.name, module, module, "forward")
        self._analytic = _InputGuard(
            self.name, jacobian or module, module, "jacobian" if jacobian else "forward"
        )

    def _rows(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
        lead = x.shape[:-1]
        if lead == u.shape[:-1]:  # how the solver calls (broadcast_shapes costs ~10 us)
            return x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1]), lead
        lead = torch.broadcast_shapes(lead, u.shape[:-1])
        x_rows = x.expand(*lead, x.shape[-1]).reshape(-1, x.shape[-1])
        u_rows = u.expand(*lead, u.shape[-1]).reshape(-1, u.shape[-1])
        return x_rows, u_rows, lead

    def _hint(self, out: object, rows: int) -> str:
        if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == rows:
            return (
                f" (the module gives {out.shape[1]} states but n_state = {self.n_state}: "
                "MPC(n_state=...) must match the dynamics)"
            )
        if isinstance(out, Tensor) and out.dim() == 1 and out.shape[0] == rows:
            return " (keep the state dimension: return (N, n), not (N,))"
        return ""

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """Next states (..., n) for x (..., n), u (..., m), through one call on rows."""
        if x.dim() == 2 and u.dim() == 2 and x.shape[0] == u.shape[0]:  # already rows
            out = self._on_rows(self._forward, x, u)
            if not _fits(out, x.shape, x.dtype):
                call = f"dynamics(x {tuple(x.shape)}, u {tuple(u.shape)})"
                shape = (x.shape[0], self.n_state)
                _check_output(self.name, out, shape, x.dtype, call, self._hint(out, x.shape[0]))
            return out
        x_rows, u_rows, lead = self._rows(x, u)
        N, n, m = x_rows.shape[0], self.n_state, self.n_ctrl
        out = self._on_rows(self._forward, x_rows, u_rows)
        if not _fits(out, (N, n), x.dtype):
            call = f"dynamics(x {(N, n)}, u {(N, m)})"
            _check_output(self.name, out, (N, n), x.dtype, call, self._hint(out, N))
        return out.reshape(*lead, n)

    def _on_rows(self, guard: _InputGuard, x: Tensor, u: Tensor) -> Any:
        """The module on rows x (N, n), u (N, m), or on (K, B, n), (K, B, m) when its
        parameters are per element; a tensor result comes back with N rows in front."""
        B, N = self.batch, x.shape[0]
        fits = B is not None and B > 1 and N % B == 0
        if self.batch_rows and fits:
            assert B is not None
            return _flat(guard(x.view(-1, B, x.shape[-1]), u.view(-1, B, u.shape[-1])), N)
        try:
            return guard(x, u)
        except Exception as error:
            if B is None or not fits or N == B or not holds_batch(self.module, B):
                raise
            try:
                out = guard(x.view(-1, B, x.shape[-1]), u.view(-1, B, u.shape[-1]))
            except Exception as retry:
                if hasattr(error, "add_note"):
                    error.add_note(
                        f"{self.name} holds a tensor whose leading dimension is the batch size "
                        f"B = {B}; called on rows shaped ({N // B}, {B}, n) instead it raised "
                        f"{type(retry).__name__}: {retry}. A module with per-element "
                        "parameters must broadcast them against x[..., i] of shape (K, B) "
                        "(docs/custom-systems.md)"
                    )
                raise error from None
            self.batch_rows = True
            return _flat(out, N)

    def _jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Jacobians (..., n, n+m) for x (..., n), u (..., m), through one call on rows."""
        x_rows, u_rows, lead = self._rows(x, u)
        N, n, m = x_rows.shape[0], self.n_state, self.n_ctrl
        J = self._on_rows(self._analytic, x_rows, u_rows)
        if not _fits(J, (N, n, n + m), x.dtype):
            call = f"dynamics.jacobian(x {(N, n)}, u {(N, m)})"
            _check_output(self.name, J, (N, n, n + m), x.dtype, call, "")
        return J.reshape(*lead, n, n + m)


def _flat(out: Any, rows: int) -> Any:
    """A result (K, B, ...) of a call on (K, B, n) rows as (K B, ...); anything else as it is
    (the caller's check names what is wrong)."""
    if isinstance(out, Tensor) and out.dim() >= 2 and out.shape[0] * out.shape[1] == rows:
        return out.reshape(rows, *out.shape[2:])
    return out


class CheckedCost:
    """A cost module with its returns checked.

    Args:
        module: the user's cost, cost(x (B, T, n), u (B, T, m)) -> (B, T).
    """

    def __init__(self, module: Callable[..., Any]) -> None:
        self.module = module
        self.name = f"cost ({module_name(module)})"
        quadratize = getattr(module, "quadratize", None)  # once: a miss raises in nn.Module
        self.quadratize = self._quadratize if callable(quadratize) else None
        self._forward = _InputGuard(self.name, module, module, "forward")
        self._quadratic = _InputGuard(
            self.name, quadratize or module, module, "quadratize" if quadratize else "forward"
        )

    @staticmethod
    def _hint(out: object, B: int, T: int) -> str:
        if not isinstance(out, Tensor):
            return ""
        if tuple(out.shape) == (B, T, 1):
            return " (drop the trailing dimension: the cost of each step is a scalar)"
        if out.dim() == 0:
            return " (return the cost of every step, not their sum)"
        if tuple(out.shape) in ((1, T), (T,)) and B != 1:
            return " (keep the batch dimension: one cost per batch element and step)"
        return ""

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step costs (B, T) for x (B, T, n), u (B, T, m)."""
        B, T = x.shape[0], x.shape[1]
        out = self._forward(x, u)
        if _fits(out, (B, T), x.dtype):
            return out
        call = f"cost(x {tuple(x.shape)}, u {tuple(u.shape)})"
        return _check_output(self.name, out, (B, T), x.dtype, call, self._hint(out, B, T))

    def _quadratize(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Hessians (B, T, d, d) and gradients (B, T, d) for x (B, T, n), u (B, T, m)."""
        B, T, d = x.shape[0], x.shape[1], x.shape[-1] + u.shape[-1]
        call = f"cost.quadratize(x {tuple(x.shape)}, u {tuple(u.shape)})"
        out = self._quadratic(x, u)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise TypeError(
                f"{self.name}: expected {call} to return (hessian, gradient), "
                f"received {_received(out)}"
            )
        hessian = _check_output(self.name, out[0], (B, T, d, d), x.dtype, call + "[0]", "")
        gradient = _check_output(self.name, out[1], (B, T, d), x.dtype, call + "[1]", "")
        return hessian, gradient


def determinism_hint(cost: CheckedCost, dynamics: CheckedDynamics, x: Tensor, u: Tensor) -> str:
    """A sentence naming a module that gives two values at one point, or "".

    A module that draws noise on every call (a stochastic simulator) has no fixed point, so
    box-DDP stops at max_iter or stalls; this calls each module twice at the stopped
    trajectory x (T, B, n), u (T, B, m) and compares (NaN equal to NaN).
    """
    names = []
    with torch.inference_mode():
        calls: list[tuple[str, Callable[[], Tensor]]] = [
            (cost.name, lambda: cost(x.transpose(0, 1), u.transpose(0, 1)))
        ]
        if x.shape[0] > 1:
            calls.append((dynamics.name, lambda: dynamics(x[:-1], u[:-1])))
        for name, call in calls:
            first, second = call(), call()
            if not torch.equal(first.isnan(), second.isnan()) or not bool(
                (first == second)[~first.isnan()].all()
            ):
                names.append(name)
    if not names:
        return ""
    return (
        f"; {' and '.join(names)} gave different values on two calls at the same states and "
        "controls: a module that draws noise on every call has no fixed point (draw the "
        "noise once, outside the solve, and pass it in as a tensor, or seed it per call)"
    )
