"""Trace a user's dynamics module to a graph the compiled path can emit as numba code.

``make_fx`` (fake tensors, so a branch on a value cannot be traced silently) records the
module's forward on one row, x (1, n), u (1, m), with its parameters and buffers as inputs,
as an ATen graph; ``trace`` maps it to ``codegen.Node``s (elementwise math, views, cat and
stack, constant-index gathers, sums, mm/addmm) and generates the step, Jacobian and curvature
source (``mpc_policy.numerics.compiled.codegen``). A module whose graph holds anything else
gets the one-line reason instead ("aten.foo is not supported by the compiled path").

The trace is kept per module class, n, m, parameter and buffer names, shapes and dtypes, and
the plain attributes of every submodule (a Python ``dt`` is compiled in as a number): a
second module of the same kind reuses it; the parameter values are read at every solve
(``flat_parameters``). Tensor attributes that are neither parameters nor buffers are compiled
in as constants (the key holds their identity).
"""

from __future__ import annotations

import ctypes
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy.numerics.compiled.codegen import Node, Ref, UnsupportedGraph, generate

__all__ = ["Traced", "check_traced", "flat_parameters", "trace"]


@dataclass(frozen=True)
class Traced:
    """A traced module: the names of its parameters and buffers in the flat vector's order,
    the constants after them, and the generated source with its scratch size."""

    names: tuple[str, ...]
    constants: np.ndarray
    source: str
    work: int


_PASS = {
    "lift_fresh_copy",
    "alias",
    "clone",
    "contiguous",
    "_to_copy",
    "to",
    "lift_fresh",
    "_assert_tensor_metadata",
}
_SAME = {
    "neg", "sin", "cos", "tan", "tanh", "exp", "log", "sqrt", "reciprocal", "sigmoid", "relu",
    "abs", "atan2", "mul", "div", "maximum", "minimum", "gt", "lt", "ge", "le", "eq", "ne",
    "mm", "detach",
}  # fmt: skip
_VIEWS = {"view", "_unsafe_view", "reshape"}


def _shape(node: Any) -> tuple[int, ...]:
    value = node.meta.get("val")
    return tuple(int(s) for s in value.shape) if isinstance(value, Tensor) else ()


def _fingerprint(module: nn.Module, n: int, m: int) -> tuple[Any, ...]:
    tensors = tuple(
        (name, tuple(z.shape), z.dtype)
        for name, z in [*module.named_parameters(), *module.named_buffers()]
    )
    plain: list[Any] = []
    for prefix, sub in module.named_modules():
        for key, value in vars(sub).items():
            if key.startswith("_"):
                continue
            if isinstance(value, bool | int | float | str | type(None)):
                plain.append((prefix, key, value))
            elif isinstance(value, tuple) and all(isinstance(v, int | float | str) for v in value):
                plain.append((prefix, key, value))
            else:
                plain.append((prefix, key, id(value)))
    return (type(module), n, m, tensors, tuple(plain))


_traces: dict[tuple[Any, ...], Traced | str] = {}


def trace(module: nn.Module, n: int, m: int) -> Traced | str:
    """The traced twin of a dynamics module, or why it has none (one line)."""
    key = _fingerprint(module, n, m)
    found = _traces.get(key)
    if found is None:
        try:
            found = _trace(module, n, m)
        except UnsupportedGraph as error:
            found = str(error)
        except Exception as error:  # any failure to trace is a reason
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            found = f"its forward does not trace ({type(error).__name__}: {text[:120]})"
        _traces[key] = found
    return found


def _trace(module: nn.Module, n: int, m: int) -> Traced:
    from torch.fx.experimental.proxy_tensor import make_fx

    named = [*module.named_parameters(), *module.named_buffers()]
    names = tuple(name for name, _ in named)
    examples = [z.detach().to(torch.float64) for _, z in named]

    def forward(*args: Tensor) -> Tensor:
        state = dict(zip(names, args[: len(names)], strict=True))
        return torch.func.functional_call(module, state, (args[-2], args[-1]))

    rows = (torch.zeros(1, n, dtype=torch.float64), torch.zeros(1, m, dtype=torch.float64))
    graph_module = make_fx(forward, tracing_mode="fake", _allow_non_fake_inputs=True)(
        *examples, *rows
    )
    offsets = np.cumsum([0] + [z.numel() for z in examples]).tolist()
    constants: list[np.ndarray] = []
    integer: dict[Any, list[int]] = {}
    unbound: dict[Any, tuple[Ref, int]] = {}
    nodes: list[Node] = []
    refs: dict[Any, Any] = {}
    placeholder = 0
    output = -1

    def add(op: str, args: tuple[Any, ...], shape: tuple[int, ...]) -> Ref:
        nodes.append(Node(op, args, shape))
        return Ref(len(nodes) - 1)

    def arg(value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            if value not in refs:
                raise UnsupportedGraph("an integer tensor is used in arithmetic")
            return refs[value]
        if isinstance(value, list | tuple):
            return tuple(arg(v) for v in value)
        return value

    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            k = placeholder
            placeholder += 1
            if k < len(names):
                refs[node] = add("param", (offsets[k],), _shape(node))
            else:
                refs[node] = add("x" if k == len(names) else "u", (), _shape(node))
            continue
        if node.op == "get_attr":
            value = getattr(graph_module, node.target)
            if value.dtype.is_floating_point or value.dtype == torch.bool:
                start = offsets[-1] + sum(c.size for c in constants)
                constants.append(value.detach().to(torch.float64).reshape(-1).numpy())
                refs[node] = add("param", (start,), tuple(value.shape))
            else:
                integer[node] = value.reshape(-1).tolist()
            continue
        if node.op == "output":
            result = node.args[0]
            if isinstance(result, list | tuple):
                result = result[0] if len(result) == 1 else None
            if not isinstance(result, torch.fx.Node):
                raise UnsupportedGraph("its forward returns no single tensor")
            output = arg(result).index
            continue
        if node.target is operator.getitem and node.args[0] in unbound:
            whole, dim = unbound[node.args[0]]  # x.unbind(dim)[k] is x.select(dim, k)
            refs[node] = add("select", (whole, dim, int(node.args[1])), _shape(node))
            continue
        name = node.target._opname if hasattr(node.target, "_opname") else str(node.target)
        overload = getattr(node.target, "_overloadname", "")
        if name == "unbind":
            unbound[node] = (arg(node.args[0]), int(node.args[1]) if len(node.args) > 1 else 0)
            continue
        if name.endswith("_") and not name.startswith("_"):
            raise UnsupportedGraph(f"aten.{name} (in place) is not supported by the compiled path")
        value = node.meta.get("val")
        if isinstance(value, Tensor) and not (
            value.dtype.is_floating_point or value.dtype == torch.bool
        ):
            if name in _PASS and node.args[0] in integer:
                integer[node] = integer[node.args[0]]
                continue
            raise UnsupportedGraph(
                f"aten.{name} on integer tensors is not supported by the compiled path"
            )
        refs[node] = _translate(name, overload, node, arg, add, integer)
    if output < 0:
        raise UnsupportedGraph("the forward returns no tensor")
    source, work = generate(nodes, output, n, m)
    flat = np.concatenate(constants) if constants else np.zeros(0)
    return Traced(names, flat, source, work)


def _translate(
    name: str, overload: str, node: Any, arg: Any, add: Any, integer: dict[Any, list[int]]
) -> Any:
    args, kwargs, shape = node.args, node.kwargs, _shape(node)

    def get(k: int, key: str, default: Any) -> Any:
        return args[k] if len(args) > k else kwargs.get(key, default)

    if name in _PASS:
        dtype = kwargs.get("dtype")
        if dtype is not None and not (dtype.is_floating_point or dtype == torch.bool):
            raise UnsupportedGraph(f"aten.{name} to {dtype} is not supported by the compiled path")
        return arg(args[0])
    if name in _SAME and not (name == "div" and kwargs.get("rounding_mode")):
        return add(name, tuple(arg(a) for a in args[:2]), shape)
    if name in ("add", "sub"):
        alpha = float(get(2, "alpha", 1))
        return add("add", (arg(args[0]), arg(args[1]), alpha if name == "add" else -alpha), shape)
    if name == "rsub":
        return add("add", (arg(args[1]), arg(args[0]), -float(get(2, "alpha", 1))), shape)
    if name == "pow" and overload == "Tensor_Scalar":
        return add("pow", (arg(args[0]), float(args[1])), shape)
    if name == "square":
        return add("pow", (arg(args[0]), 2.0), shape)
    if name == "rsqrt":
        return add("pow", (arg(args[0]), -0.5), shape)
    if name == "clamp" and overload in ("default", ""):
        lo, hi = get(1, "min", None), get(2, "max", None)
        return add("clamp", (arg(args[0]), lo, hi), shape)
    if name == "where" and overload == "self":
        return add("where", tuple(arg(a) for a in args[:3]), shape)
    if name == "select":
        return add("select", (arg(args[0]), int(args[1]), int(args[2])), shape)
    if name == "slice":
        step = int(get(4, "step", 1))
        return add(
            "slice",
            (arg(args[0]), int(get(1, "dim", 0)), get(2, "start", None), get(3, "end", None), step),
            shape,
        )
    if name == "unsqueeze":
        return add("unsqueeze", (arg(args[0]), int(args[1])), shape)
    if name == "squeeze":
        dims = (
            None
            if len(args) < 2
            else (tuple(args[1]) if isinstance(args[1], list | tuple) else (args[1],))
        )
        return add("squeeze", (arg(args[0]), dims), shape)
    if name in ("permute", "t", "transpose", "numpy_T"):
        rank = len(shape)
        if name == "permute":
            order = tuple(args[1])
        elif name == "transpose":
            order_list = list(range(rank))
            a, b = args[1] % rank, args[2] % rank
            order_list[a], order_list[b] = order_list[b], order_list[a]
            order = tuple(order_list)
        else:
            order = tuple(reversed(range(rank)))
        return add("permute", (arg(args[0]), order), shape)
    if name == "expand":
        return add("expand", (arg(args[0]), tuple(int(s) for s in args[1])), shape)
    if name in _VIEWS:
        return add("reshape", (arg(args[0]),), shape)
    if name == "cat":
        return add("cat", (tuple(arg(a) for a in args[0]), int(get(1, "dim", 0))), shape)
    if name == "stack":
        dim = int(get(1, "dim", 0))
        rank = len(shape)
        parts = []
        for a in args[0]:
            inner = tuple(_shape(a))
            d = dim % rank
            parts.append(add("unsqueeze", (arg(a), d), (*inner[:d], 1, *inner[d:])))
        return add("cat", (tuple(parts), dim % rank), shape)
    if name == "index" and overload == "Tensor":
        indices = args[1]
        used = [k for k, index in enumerate(indices) if index is not None]
        if len(used) != 1 or indices[used[0]] not in integer:
            raise UnsupportedGraph(
                "aten.index with tensor-valued or several indices is not supported by the "
                "compiled path"
            )
        return add("gather", (arg(args[0]), used[0], tuple(integer[indices[used[0]]])), shape)
    if name == "index_select" and args[2] in integer:
        return add("gather", (arg(args[0]), int(args[1]), tuple(integer[args[2]])), shape)
    if name in ("sum", "mean"):
        dims = tuple(get(1, "dim", None) or ()) if overload != "default" else ()
        keepdim = bool(get(2, "keepdim", False)) if overload != "default" else False
        source_shape = _shape(args[0])
        reduced = dims if dims else tuple(range(len(source_shape)))
        count = math.prod(source_shape[d] for d in reduced) if name == "mean" else 1
        out_shape = shape
        ref = add(
            "sum",
            (arg(args[0]), dims, 1.0 / count),
            _keep(source_shape, reduced) if keepdim else out_shape,
        )
        return ref
    if name == "addmm":
        beta, alpha = float(get(3, "beta", 1)), float(get(4, "alpha", 1))
        return add("addmm", (arg(args[0]), arg(args[1]), arg(args[2]), beta, alpha), shape)
    if name in ("full", "full_like", "scalar_tensor", "zeros", "ones", "zeros_like", "ones_like"):
        value = {"zeros": 0.0, "ones": 1.0, "zeros_like": 0.0, "ones_like": 1.0}.get(name)
        if value is None:
            value = float(args[0] if name == "scalar_tensor" else args[1])
        dtype = node.meta["val"].dtype
        rounded = torch.tensor(value, dtype=dtype).item() if dtype.is_floating_point else value
        return add("fill", (float(rounded),), shape)
    raise UnsupportedGraph(f"aten.{name} is not supported by the compiled path")


def _keep(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    rank = len(shape)
    reduced = {d % rank for d in dims}
    return tuple(1 if k in reduced else size for k, size in enumerate(shape))


def flat_parameters(module: nn.Module, traced: Traced, dtype: torch.dtype) -> np.ndarray:
    """The module's current parameters and buffers in the trace's order, each in the
    problem's dtype as the torch module computes with them, then the constants: (P, 1)
    float64."""
    tensors = [_attribute(module, name) for name in traced.names]
    size = sum(z.numel() for z in tensors)
    out = np.empty(size + traced.constants.size)
    start = 0
    for z in tensors:  # copied into one vector, rounded to the problem's dtype first
        values = z.detach() if z.dtype == dtype else z.detach().to(dtype)
        out[start : start + values.numel()] = values.numpy().ravel()
        start += values.numel()
    out[start:] = traced.constants
    return out.reshape(-1, 1)


def _attribute(module: nn.Module, name: str) -> Tensor:
    """The parameter or buffer at a dotted name ("net.0.weight"), read from the modules'
    own tables (``getattr`` on a module costs microseconds)."""
    *path, leaf = name.split(".")
    for part in path:
        module = module._modules[part]  # type: ignore[assignment]
    found = module._parameters.get(leaf)
    return found if found is not None else module._buffers[leaf]  # type: ignore[return-value]


def _pointer(z: np.ndarray) -> Any:
    return z.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def check_traced(module: nn.Module, traced: Traced, functions: Any, n: int, m: int) -> str | None:
    """Why the compiled functions of a trace do not reproduce the module (None: they do):
    its forward on a batch of 4 random rows, and autograd's Jacobian of the first, float64.
    A module whose rows depend on each other (a batch statistic) fails here.

    Args:
        module: the traced module.
        traced: its trace.
        functions: the compiled functions (``traced.TracedFunctions``: ``cfuncs`` step,
            jacobian, curvature).
        n: state size.
        m: control size.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, n, generator=gen, dtype=torch.float64)
    u = torch.randn(4, m, generator=gen, dtype=torch.float64)
    state = {
        name: z.detach().to(torch.float64)
        for name, z in [*module.named_parameters(), *module.named_buffers()]
    }

    def forward(xs: Tensor, us: Tensor) -> Tensor:
        return torch.func.functional_call(module, state, (xs, us))

    with torch.no_grad():
        expected = forward(x, u)
    if not isinstance(expected, Tensor) or tuple(expected.shape) != (4, n):
        shape = tuple(expected.shape) if isinstance(expected, Tensor) else type(expected).__name__
        return f"its forward on a batch of 4 rows gives {shape}, not shape (4, {n})"
    jacobian = torch.autograd.functional.jacobian(
        lambda z: forward(z[None, :n], z[None, n:])[0], torch.cat([x[0], u[0]])
    )
    p = flat_parameters(module, traced, torch.float64)
    work = np.zeros(traced.work)
    got = np.empty((4, n))
    for row in range(4):
        xs = np.zeros((2, n))
        xs[0] = x[row].numpy()
        us = np.ascontiguousarray(u[row : row + 1].numpy())
        functions.cfuncs[0].ctypes(
            _pointer(p), _pointer(xs), _pointer(us), _pointer(work), 0, _pointer(xs), _pointer(xs)
        )
        got[row] = xs[1]
    F = np.zeros((1, 1, n, n + m))
    xs, us = np.ascontiguousarray(x[:1].numpy()), np.ascontiguousarray(u[:1].numpy())
    functions.cfuncs[1].ctypes(
        _pointer(p), _pointer(xs), _pointer(us), _pointer(work), 0, _pointer(F), _pointer(F)
    )
    if not np.allclose(got, expected.numpy(), rtol=1e-9, atol=1e-12, equal_nan=True):
        return (
            "the traced step differs from its forward on a batch "
            "(do its rows depend on each other?)"
        )
    if not np.allclose(F[0, 0], jacobian.numpy(), rtol=1e-9, atol=1e-12, equal_nan=True):
        return "the traced Jacobian differs from autograd's"
    return None
