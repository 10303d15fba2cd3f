"""Straight-line numba source of a traced dynamics step, its Jacobian and its curvature.

The input is a graph of elementwise, view, concatenation, reduction and matrix operations on
one row, x (1, n), u (1, m), with the parameters read from a flat vector p (``Node``; built
by ``mpc_policy.problem.trace``). The output is the source of three C functions with one
signature (``SIGNATURE``, called through ``traced.call``), for element rows t of whole
trajectories x (T, n), u (T, m):

    step(p, x, u, w, t, _, _):      x[t + 1] = f(x[t], u[t])
    jacobian(p, x, u, w, t, F, _):  F[t, 0] (n, d) = df/d[x; u]              (forward mode)
    curvature(p, x, u, w, t, lam, C): C[t, 0] (d, d) += sum_i lam[t + 1, i] d2 f_i / d[x; u]2

Forward-mode differentiation in d = n + m directions: every value v (shape S) has its first
tangents (d, *S), with y = g(a, b): dy = g_a da + g_b db. The curvature adds a reverse
sweep of lam' f over the same values and first tangents (``_second_order``: second-order
adjoints, no second tangents). Every tensor is a strided view into a scratch vector w or
into p, so views, transposes and broadcasts cost nothing; each operation is one loop nest
over its output (``_emit``: unrolled when it has at most ``UNROLL`` elements), written into w
at fixed offsets.
The derivative rules are autograd's (relu' = [a > 0], clamp' = [lo <= a <= hi], a tie of
maximum splits the gradient), so the Jacobian equals the torch module's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mpc_policy.numerics.compiled._emit import (
    UNROLL,
    Emitter,
    UnsupportedGraph,
    View,
    access,
    broadcast,
    contiguous,
    flat,
    numel,
    spread,
    substitute,
    view_op,
)
from mpc_policy.numerics.compiled._second_order import emit_curvature

__all__ = ["SIGNATURE", "Node", "Ref", "UnsupportedGraph", "generate"]

SIGNATURE = (
    "void(CPointer(float64), CPointer(float64), CPointer(float64), CPointer(float64), int64, "
    "CPointer(float64), CPointer(float64))"
)


# functions the generated code calls (decorated ``_HELPER``, numba-compiled on first use).
# tanh: libm's costs twice an exp; Cephes' rational form on |a| < 0.625, else through exp:
# within 1 ulp of the exact value (2 for libm's) on 1.2M points checked against mpmath
HELPERS = """
@_HELPER
def _tanh(a):
    z = a * a
    if z < 0.390625:
        if z == 0.0:
            return a  # keeps the sign of zero
        P = (-0.964399179425052238628 * z - 99.2877231001918586564) * z - 1614.68768441708447952
        Q = ((z + 112.811678491632931402) * z + 2235.48839060100448583) * z + 4844.06305325125486048
        return a + a * z * P / Q
    q = 1.0 - 2.0 / (math.exp(2.0 * abs(a)) + 1.0)
    return q if a > 0.0 else (-q if a < 0.0 else a)
"""


@dataclass(frozen=True)
class Ref:
    """An earlier node of the graph, by index."""

    index: int


@dataclass(frozen=True)
class Node:
    """One operation: ``op`` (a name of ``_UNARY``, ``_BINARY`` or the structural ones below),
    its arguments (``Ref``, numbers, tuples), its output shape."""

    op: str
    args: tuple[Any, ...]
    shape: tuple[int, ...]


# elementwise rules: value, first partials, second partials ("" = zero), in a, b, c, y
_UNARY: dict[str, tuple[str, str, str]] = {
    "neg": ("-a", "-1.0", ""),
    "sin": ("math.sin(a)", "math.cos(a)", "-math.sin(a)"),
    "cos": ("math.cos(a)", "-math.sin(a)", "-math.cos(a)"),
    "tan": ("math.tan(a)", "1.0 + y * y", "2.0 * y * (1.0 + y * y)"),
    "tanh": ("_tanh(a)", "1.0 - y * y", "-2.0 * y * (1.0 - y * y)"),
    "exp": ("math.exp(a)", "y", "y"),
    "log": ("math.log(a)", "1.0 / a", "-1.0 / (a * a)"),
    "sqrt": ("math.sqrt(a)", "0.5 / y", "-0.25 / (y * a)"),
    "reciprocal": ("1.0 / a", "-y * y", "2.0 * y * y * y"),
    "sigmoid": ("1.0 / (1.0 + math.exp(-a))", "y * (1.0 - y)", "y * (1.0 - y) * (1.0 - 2.0 * y)"),
    "relu": ("(0.0 if a <= 0.0 else a)", "(1.0 if a > 0.0 else 0.0)", ""),
    "abs": ("abs(a)", "(1.0 if a > 0.0 else (-1.0 if a < 0.0 else 0.0))", ""),
    "identity": ("a", "1.0", ""),
}
_BINARY: dict[str, tuple[str, tuple[str, str], tuple[str, str, str]]] = {
    # value, (g_a, g_b), (g_aa, g_ab, g_bb)
    "mul": ("a * b", ("b", "a"), ("", "1.0", "")),
    "div": ("a / b", ("1.0 / b", "-a / (b * b)"), ("", "-1.0 / (b * b)", "2.0 * a / (b * b * b)")),
    "atan2": (
        "math.atan2(a, b)",
        ("b / (a * a + b * b)", "-a / (a * a + b * b)"),
        (
            "-2.0 * a * b / ((a * a + b * b) * (a * a + b * b))",
            "(a * a - b * b) / ((a * a + b * b) * (a * a + b * b))",
            "2.0 * a * b / ((a * a + b * b) * (a * a + b * b))",
        ),
    ),
    "maximum": (
        "(a if a > b else (b if b > a else (a if a == a else a)))",
        (
            "(1.0 if a > b else (0.5 if a == b else 0.0))",
            "(1.0 if b > a else (0.5 if a == b else 0.0))",
        ),
        ("", "", ""),
    ),
    "minimum": (
        "(a if a < b else (b if b < a else a))",
        (
            "(1.0 if a < b else (0.5 if a == b else 0.0))",
            "(1.0 if b < a else (0.5 if a == b else 0.0))",
        ),
        ("", "", ""),
    ),
    "gt": ("(1.0 if a > b else 0.0)", ("", ""), ("", "", "")),
    "lt": ("(1.0 if a < b else 0.0)", ("", ""), ("", "", "")),
    "ge": ("(1.0 if a >= b else 0.0)", ("", ""), ("", "", "")),
    "le": ("(1.0 if a <= b else 0.0)", ("", ""), ("", "", "")),
    "eq": ("(1.0 if a == b else 0.0)", ("", ""), ("", "", "")),
    "ne": ("(1.0 if a != b else 0.0)", ("", ""), ("", "", "")),
}
STRUCTURAL = frozenset(
    {
        "x", "u", "param", "fill", "add", "pow", "clamp", "where", "select", "slice",
        "unsqueeze", "squeeze", "permute", "expand", "reshape", "copy", "detach", "cat",
        "gather", "sum", "mm", "addmm",
    }
)  # fmt: skip
OPS = frozenset(_UNARY) | frozenset(_BINARY) | STRUCTURAL


_BLOCK = 8  # the most directions a product's loop carries at once (d locals)


@dataclass
class _Value:
    """A node's value and its first tangents (None: zero)."""

    v: View | float
    d1: View | None = None


class _Builder:
    def __init__(self, graph: list[Node], n: int, m: int, order: int) -> None:
        self.graph, self.e = graph, Emitter(n, m, order)
        self.values: list[_Value] = []
        # per node index: the copies a reshape made (source, copy) and a cat's parts and dim,
        # for the reverse sweep of the curvature
        self.copies: dict[int, list[tuple[View, View]]] = {}
        self.parts: dict[int, tuple[list[_Value], int]] = {}

    # -- elementwise with derivatives ---------------------------------------------------
    def elementwise(
        self,
        shape: tuple[int, ...],
        value: str,
        operands: list[_Value | float],
        first: list[str],
    ) -> _Value:
        e = self.e
        names = {"abc"[k]: f"{{{k}}}" for k in range(len(operands))}
        vals = [o.v if isinstance(o, _Value) else float(o) for o in operands]
        y = e.fresh(shape)
        ops = [broadcast(v, 0, (), 0, shape) for v in vals]
        e.loop(shape, y, "=", substitute(value, names), ops)
        out = _Value(y)
        names_y = {**names, "y": f"{{{len(operands)}}}"}
        if e.order >= 1:
            out.d1 = self._tangent(shape, operands, vals, y, first, names_y)
        return out

    def _tangent(self, shape, operands, vals, y, first, names) -> View | None:
        """dy = sum_k g_k da_k, (d, *shape)."""
        e, d = self.e, self.e.d
        full = (d, *shape)
        terms: list[tuple[str, list]] = []
        base = [broadcast(v, 0, (), 1, shape) for v in vals] + [broadcast(y, 0, (), 1, shape)]
        for k, o in enumerate(operands):
            if not isinstance(o, _Value) or not first[k] or o.d1 is None:
                continue
            terms.append(
                (
                    f"({substitute(first[k], names)}) * {{{len(base)}}}",
                    [broadcast(o.d1, 1, (0,), 1, shape)],
                )
            )
        if not terms:
            return None
        out = e.fresh(full)
        for k, (expr, extra) in enumerate(terms):
            e.loop(full, out, "=" if k == 0 else "+=", expr, base + extra)
        return out

    # -- structure -----------------------------------------------------------------------
    def lift(self, fn, x: _Value) -> _Value:
        """Apply a view transform fn(view, lead) to the value and its tangents."""
        return _Value(
            fn(x.v, 0),
            None if x.d1 is None else fn(x.d1, 1),
        )

    def materialize(self, view: View, lead: int) -> View:
        out = self.e.fresh(view.shape)
        self.e.loop(view.shape, out, "=", "{0}", [view])
        if lead == 0:
            self.copies.setdefault(len(self.values), []).append((view, out))
        return out

    def contraction(
        self,
        target: View,
        lead: int,
        A: View | None,
        B: View | None,
        pa: tuple[int, ...],
        pb: tuple[int, ...],
        scale: float,
    ) -> None:
        """target[dirs, i, j] += scale * sum_l A[dirs_a, i, l] B[dirs_b, l, j]."""
        if A is None or B is None:
            return
        dirs = target.shape[:lead]
        p_, r_ = target.shape[lead:]
        q_ = A.shape[-1]
        shape = (*dirs, p_, r_, q_)
        t = View(target.buf, target.offset, shape, (*target.strides, 0))
        sa = [0] * len(shape)
        for i, place in enumerate(pa):
            sa[place] = A.strides[i]
        sa[lead], sa[lead + 2] = A.strides[-2], A.strides[-1]
        sb = [0] * len(shape)
        for i, place in enumerate(pb):
            sb[place] = B.strides[i]
        sb[lead + 2], sb[lead + 1] = B.strides[-2], B.strides[-1]
        a = View(A.buf, A.offset, shape, tuple(sa))
        b = View(B.buf, B.offset, shape, tuple(sb))
        factor = "" if scale == 1.0 else f"{scale!r} * "
        tri = lead == 2
        if numel(shape) <= UNROLL:
            self.e.loop(shape, t, "+=", factor + "{0} * {1}", [a, b], tri)
            return
        # the sum over l in a local: stores into w (which the operands may alias) stay
        # out of the inner loop
        e = self.e
        if lead == 1 and shape[0] <= _BLOCK:
            # one local per direction in one loop over l: the operand without directions
            # (a weight) is read once for all of them
            names, pad = e.header(shape[1:-1], False, 0, 1)
            last = f"i{len(shape) - 1}"
            sums = [f"s{k}" for k in range(shape[0])]
            e.lines.append(f"{pad}{' = '.join(sums)} = 0.0")
            e.lines.append(f"{pad}for {last} in range({shape[-1]}):")
            for k, name in enumerate(sums):
                index = [k, *names, last]
                e.lines.append(f"{pad}    {name} += {access(a, index)} * {access(b, index)}")
            for k, name in enumerate(sums):
                e.lines.append(f"{pad}{access(t, [k, *names, 0])} += {factor}{name}")
            return
        names, pad = e.header(shape[:-1], tri)
        last = f"i{len(shape) - 1}"
        e.lines.append(f"{pad}s = 0.0")
        e.lines.append(f"{pad}for {last} in range({shape[-1]}):")
        index = [*names, last]
        e.lines.append(f"{pad}    s += {access(a, index)} * {access(b, index)}")
        e.lines.append(f"{pad}{access(t, [*names, 0])} += {factor}s")

    def zeros(self, shape: tuple[int, ...]) -> View:
        out = self.e.fresh(shape)
        self.e.loop(shape, out, "=", "0.0", [])
        return out

    def get(self, arg: Any) -> _Value | float:
        if isinstance(arg, Ref):
            return self.values[arg.index]
        if isinstance(arg, bool | int | float):
            return float(arg)
        raise UnsupportedGraph(f"an argument {arg!r} is not supported")

    def rule(self, node: Node) -> tuple[str, tuple[Any, ...], list[str], dict] | None:
        """An elementwise operation's rule: value, operands, first partials, second partials
        {(i, j): g_ij} (templates in a, b, c, y); None for the other operations."""
        op, args = node.op, node.args
        if op in _UNARY:
            value, first, second = _UNARY[op]
            return value, args[:1], [first], {(0, 0): second}
        if op in _BINARY:
            value, first2, second2 = _BINARY[op]
            rules = {(0, 0): second2[0], (0, 1): second2[1], (1, 0): second2[1], (1, 1): second2[2]}
            return value, args[:2], list(first2), rules
        if op == "add":  # a + alpha b
            alpha = float(args[2])
            return f"a + {alpha!r} * b", args[:2], ["1.0", repr(alpha)], {}
        if op == "copy":
            self._value(args[0])
            return "a", args[:1], ["1.0"], {}
        if op == "pow":
            exponent = float(args[1])
            if exponent == 2.0:
                return "a * a", args[:1], ["2.0 * a"], {(0, 0): "2.0"}
            e1, e2 = exponent - 1.0, exponent - 2.0
            return (
                f"a ** {exponent!r}",
                args[:1],
                [f"{exponent!r} * a ** {e1!r}"],
                {(0, 0): f"{exponent * e1!r} * a ** {e2!r}"},
            )
        if op == "clamp":
            lo, hi = args[1], args[2]
            value, inside = "a", []
            if lo is not None:
                value = f"({float(lo)!r} if a < {float(lo)!r} else {value})"
                inside.append(f"a >= {float(lo)!r}")
            if hi is not None:
                value = f"({float(hi)!r} if a > {float(hi)!r} else {value})"
                inside.append(f"a <= {float(hi)!r}")
            first = f"(1.0 if {' and '.join(inside)} else 0.0)" if inside else "1.0"
            return value, args[:1], [first], {}
        if op == "where":  # c ? a : b, no derivative in c
            return (
                "(a if c != 0.0 else b)",
                (args[1], args[2], args[0]),
                ["(1.0 if c != 0.0 else 0.0)", "(0.0 if c != 0.0 else 1.0)", ""],
                {},
            )
        return None

    def run(self, node: Node) -> _Value:  # one dispatch over the operations
        e, op, args, shape = self.e, node.op, node.args, node.shape
        if op in ("x", "u"):
            size, column = (e.n, 0) if op == "x" else (e.m, e.n)
            v = e.fresh((1, size))
            e.lines.append(f"    for i in range({size}):")
            e.lines.append(f"        w[{v.offset} + i] = {op}[t * {size} + i]")
            out = _Value(v)
            if e.order >= 1:
                d1 = self.zeros((e.d, 1, size))
                e.lines.append(f"    for i in range({size}):")
                e.lines.append(f"        w[{d1.offset} + ({column} + i) * {size} + i] = 1.0")
                out.d1 = d1
            return out
        if op == "param":
            (offset,) = args
            return _Value(View("p", offset, shape, contiguous(shape)))
        if op == "fill":
            v = e.fresh(shape)
            e.loop(shape, v, "=", repr(float(args[0])), [])
            return _Value(v)
        rule = self.rule(node)
        if rule is not None:
            value, operands, first, _ = rule
            return self.elementwise(shape, value, [self.get(a) for a in operands], first)
        if op == "detach":
            x = self.get(args[0])
            return _Value(x.v if isinstance(x, _Value) else x)
        if op in ("select", "slice", "unsqueeze", "squeeze", "permute", "expand"):
            return self.lift(lambda v, lead: view_op(op, v, lead, args[1:]), self._value(args[0]))
        if op == "reshape":
            x = self._value(args[0])
            return self.lift(lambda v, lead: self._reshape(v, lead, shape), x)
        if op == "cat":
            return self._cat([self._value(a) for a in args[0]], args[1], shape)
        if op == "gather":  # out.select(dim, j) = a.select(dim, index[j])
            x, dim, index = self._value(args[0]), args[1], args[2]
            parts = [
                self.lift(
                    lambda v, lead, i=i: view_op(
                        "unsqueeze", view_op("select", v, lead, (dim, i)), lead, (dim,)
                    ),
                    x,
                )
                for i in index
            ]
            return self._cat(parts, dim, shape)
        if op == "sum":
            return self._sum(self._value(args[0]), tuple(args[1]), shape, float(args[2]))
        if op in ("mm", "addmm"):
            return self._mm(node)
        raise UnsupportedGraph(f"aten.{op} is not supported by the compiled path")

    def _value(self, arg: Any) -> _Value:
        x = self.get(arg)
        if not isinstance(x, _Value):
            raise UnsupportedGraph("a number where a tensor was expected")
        return x

    def _reshape(self, v: View, lead: int, shape: tuple[int, ...]) -> View:
        tail = v.shape[lead:]
        strides = v.strides[lead:]
        if any(
            s != c for s, c, size in zip(strides, contiguous(tail), tail, strict=True) if size != 1
        ):
            v = self.materialize(v, lead)
        full = (*v.shape[:lead], *shape)
        inner = contiguous(shape)
        return View(v.buf, v.offset, full, (*v.strides[:lead], *inner))

    def _cat(self, parts: list[_Value], dim: int, shape: tuple[int, ...]) -> _Value:
        e = self.e
        dim = dim % len(shape)
        self.parts[len(self.values)] = (parts, dim)
        out = _Value(e.fresh(shape))
        levels = [1] if e.order >= 1 and any(p.d1 is not None for p in parts) else []
        if levels:
            out.d1 = e.fresh((e.d, *shape))
        start = 0
        for p in parts:
            assert isinstance(p.v, View)
            size = p.v.shape[dim]
            for level in (0, *levels):
                target = out.v if level == 0 else getattr(out, f"d{level}")
                source = p.v if level == 0 else getattr(p, f"d{level}")
                assert isinstance(target, View)
                block = view_op("slice", target, level, (dim, start, start + size, 1))
                if source is None:
                    e.loop(block.shape, block, "=", "0.0", [])
                else:
                    src = (
                        broadcast(source, level, tuple(range(level)), level, block.shape[level:])
                        if level
                        else source
                    )
                    e.loop(block.shape, block, "=", "{0}", [src])
            start += size
        return out

    def _sum(
        self, x: _Value, dims: tuple[int, ...], shape: tuple[int, ...], scale: float
    ) -> _Value:
        e = self.e
        assert isinstance(x.v, View)
        rank = len(x.v.shape)
        dims = tuple(sorted({dim % rank for dim in dims} if dims else set(range(rank))))
        out = _Value(e.fresh(shape))
        factor = "" if scale == 1.0 else f"{scale!r} * "
        for level in range(0, e.order + 1):
            source = x.v if level == 0 else getattr(x, f"d{level}")
            if source is None:
                continue
            target = out.v if level == 0 else e.fresh((*(e.d,) * level, *shape))
            if level:
                setattr(out, f"d{level}", target)
            assert isinstance(target, View) and isinstance(source, View)
            e.loop(target.shape, target, "=", "0.0", [])
            t = spread(target, level, x.v.shape, dims)
            e.loop(source.shape, t, "+=", factor + "{0}", [source])
        return out

    def mm_operands(self, node: Node) -> tuple[_Value | None, _Value, _Value, float, float]:
        """bias, A, B, beta, alpha of ``mm`` (no bias) or ``addmm``: beta bias + alpha A B."""
        if node.op == "mm":
            return None, self._value(node.args[0]), self._value(node.args[1]), 0.0, 1.0
        A, B = self._value(node.args[1]), self._value(node.args[2])
        return self._value(node.args[0]), A, B, float(node.args[3]), float(node.args[4])

    def _mm(self, node: Node) -> _Value:
        e, shape = self.e, node.shape
        bias, A, B, beta, alpha = self.mm_operands(node)
        assert isinstance(A.v, View) and isinstance(B.v, View)
        out = _Value(e.fresh(shape))
        for level in range(0, e.order + 1):
            bias_level = None if bias is None else (bias.v if level == 0 else bias.d1)
            if level == 0:
                target = out.v
            elif A.d1 is None and B.d1 is None and bias_level is None:
                continue
            else:
                target = out.d1 = e.fresh((e.d, *shape))
            assert isinstance(target, View)
            if bias_level is None or beta == 0.0:
                e.loop(target.shape, target, "=", "0.0", [])
            else:
                src = broadcast(bias_level, level, tuple(range(level)), level, shape)
                scaled = ("" if beta == 1.0 else f"{beta!r} * ") + "{0}"
                e.loop(target.shape, target, "=", scaled, [src])
            if level == 0:
                self.contraction(target, 0, A.v, B.v, (), (), alpha)
            else:
                self.contraction(target, 1, A.d1, B.v, (0,), (), alpha)
                self.contraction(target, 1, A.v, B.d1, (), (0,), alpha)
        return out


def generate(graph: list[Node], output: int, n: int, m: int) -> tuple[str, int]:
    """The source of the functions ``step``, ``jacobian``, ``curvature`` (module level, each
    decorated with ``@_DECORATE``) and the scratch size w needs.

    Args:
        graph: the operations in order; ``Ref(k)`` names the k-th.
        output: the index of the node of the next state, shape (1, n).
        n: state size.
        m: control size.

    Raises:
        UnsupportedGraph: an operation or an argument the generator cannot emit.
    """
    d = n + m
    sources, size = [], 0
    for name, order in (("step", 0), ("jacobian", 1), ("curvature", 2)):
        builder = _Builder(graph, n, m, min(order, 1))  # curvature: first order, then reverse
        for node in graph:
            if node.op not in OPS:
                raise UnsupportedGraph(f"aten.{node.op} is not supported by the compiled path")
            builder.values.append(builder.run(node))
        out = builder.values[output]
        e = builder.e
        if not isinstance(out.v, View) or out.v.shape[-1] != n or numel(out.v.shape) != n:
            raise UnsupportedGraph(
                f"the output has shape {getattr(out.v, 'shape', ())}, not (1, {n})"
            )
        if order == 0:
            target = View("x", 0, (n,), (1,))
            e.lines.append(f"    base = (t + 1) * {n}")
            e.loop((n,), target, "=", "{0}", [flat(out.v, 0, n)])
            e.lines[-n:] = [line.replace("x[", "x[base + ") for line in e.lines[-n:]]
        elif order == 1:
            e.lines.append(f"    base = t * {n * d}")
            for i in range(n):
                for j in range(d):
                    value = "0.0" if out.d1 is None else access(flat(out.d1, 1, n), (j, i))
                    e.lines.append(f"    a[base + {i * d + j}] = {value}")
        else:
            emit_curvature(builder, output)
        # non-finite literals (a NaN constant, an infinite bound) as names numba knows
        body = re.sub(r"\b(nan|inf)\b", r"math.\1", "\n".join(e.lines)) or "    pass"
        sources.append(f"@_DECORATE\ndef {name}(p, x, u, w, t, a, b):\n{body}\n")
        size = max(size, e.size)
    return HELPERS + "\n\n" + "\n\n".join(sources), max(size, 1)
