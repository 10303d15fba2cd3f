"""The curvature of a traced graph by second-order adjoints (forward over reverse).

For F = lam' f(z), z = [x; u] (d,), every value v of the graph gets its first tangents dv
(d, *S) by forward mode (as in the Jacobian), then its adjoint vbar = dF/dv (*S) by one
reverse sweep, seeded with lam at the output. The Hessian is the sum, over the operations
whose local second derivatives do not vanish, of those derivatives contracted with the
adjoint of their output and the tangents of their operands:

    d2F/dz2 [k1, k2] = sum_v sum_s vbar[s] sum_ij g_ij[s] da_i[k1, s] da_j[k2, s]

(g_ij = d2 v / da_i da_j, elementwise; for a product of matrices A B, the bilinear term
dA[k1] dB[k2] + dA[k2] dB[k1]). Only first tangents are carried, (d, *S) a value instead of
(d, d, *S): an MLP layer costs d + 2 products with its weights instead of d (d + 1) / 2 + d + 1.

The adjoints live in a mirror of the scratch vector: the adjoint of w[k] is w[M + k], so a
view of a value (a slice, a transpose, a broadcast) is, at the same offsets and strides, the
view of its adjoint, and the reverse sweep of every view operation is nothing. Used by
``codegen.generate`` for the curvature function.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mpc_policy.numerics.compiled._emit import (
    View,
    access,
    broadcast,
    flat,
    numel,
    spread,
    substitute,
    view_op,
)

__all__ = ["emit_curvature"]


def emit_curvature(builder: Any, output: int) -> None:
    """The reverse sweep of lam' f and the Hessian's update of b (the rows' C[t, 0], (d, d)),
    after the builder (``codegen._Builder`` of order 1) emitted the values and first tangents.

    Args:
        builder: the builder that ran every node of the graph at order 1.
        output: the index of the node of the next state, shape (1, n).
    """
    e, values = builder.e, builder.values
    n, d = e.n, e.d
    out = values[output]
    e.lines.append(f"    base = t * {d * d}")
    e.lines.append(f"    row = (t + 1) * {n}")
    if out.d1 is None or not isinstance(out.v, View):
        return  # f does not depend on z: no curvature
    mirror = e.size
    e.size *= 2

    def adjoint(v: Any) -> View | None:
        return (
            replace(v, offset=v.offset + mirror) if isinstance(v, View) and v.buf == "w" else None
        )

    _zero_adjoints(e, [value.v for value in values if value.d1 is not None], mirror)
    H = e.fresh((d, d))
    e.loop((d, d), H, "=", "0.0", [])
    seed = adjoint(flat(out.v, 0, n))
    assert seed is not None
    for i in range(n):
        e.lines.append(f"    {access(seed, (i,))} += a[row + {i}]")
    sweep = _Sweep(builder, adjoint, H)
    for k in range(len(values) - 1, -1, -1):
        if values[k].d1 is not None:
            sweep.node(k)
    for j in range(d):
        for k in range(d):
            e.lines.append(f"    b[base + {j * d + k}] += {access(H, (min(j, k), max(j, k)))}")


def _zero_adjoints(e: Any, views: list[Any], mirror: int) -> None:
    """Zero the adjoints of the given values: the union of their footprints, mirrored."""
    spans = []
    for v in views:
        if not isinstance(v, View) or v.buf != "w" or numel(v.shape) == 0:
            continue
        low = v.offset + sum(min(0, (s - 1) * st) for s, st in zip(v.shape, v.strides))
        high = v.offset + sum(max(0, (s - 1) * st) for s, st in zip(v.shape, v.strides)) + 1
        spans.append((low, high))
    merged: list[list[int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    for low, high in merged:
        e.loop((high - low,), View("w", mirror + low, (high - low,), (1,)), "=", "0.0", [])


class _Sweep:
    """The reverse rule of each operation: its output's adjoint into its operands', and its
    local second derivatives into H."""

    def __init__(self, builder: Any, adjoint: Any, H: View) -> None:
        self.b, self.e, self.adjoint, self.H = builder, builder.e, adjoint, H

    def node(self, k: int) -> None:
        b = self.b
        node, value = b.graph[k], b.values[k]
        ybar = self.adjoint(value.v)
        if ybar is None:
            return
        rule = b.rule(node)
        if rule is not None:
            self.elementwise(node.shape, value.v, ybar, rule)
        elif node.op == "reshape":  # a copy where the source was not contiguous
            for source, copy in b.copies.get(k, []):
                self.add(source, self.adjoint(copy), source.shape)
        elif node.op in ("cat", "gather"):
            parts, dim = b.parts[k]
            start = 0
            for part in parts:
                size = part.v.shape[dim]
                if part.d1 is not None:
                    block = view_op("slice", ybar, 0, (dim, start, start + size, 1))
                    self.add(part.v, block, block.shape)
                start += size
        elif node.op == "sum":
            self.sum(node, ybar)
        elif node.op in ("mm", "addmm"):
            self.mm(node, ybar)
        # x, u: leaves; views share their base's adjoint (nothing to do)

    def add(self, target: View, source: Any, shape: tuple[int, ...], factor: str = "") -> None:
        """adjoint(target) += factor source over shape (target broadcast to it)."""
        bar = self.adjoint(target)
        if bar is None or source is None:
            return
        self.e.loop(shape, broadcast(bar, 0, (), 0, shape), "+=", factor + "{0}", [source])

    def elementwise(
        self, shape: tuple[int, ...], y: View, ybar: View, rule: tuple[Any, ...]
    ) -> None:
        b, e = self.b, self.e
        _, args, first, second = rule
        operands = [b.get(arg) for arg in args]
        vals = [o if isinstance(o, float) else o.v for o in operands]
        count = len(operands)
        names = {**{"abc"[k]: f"{{{k}}}" for k in range(count)}, "y": f"{{{count}}}"}
        ops = [broadcast(v, 0, (), 0, shape) for v in vals] + [y, ybar]
        bar = f"{{{count + 1}}}"
        for k, o in enumerate(operands):
            if not isinstance(o, float) and o.d1 is not None and first[k]:
                target = self.adjoint(o.v)
                if target is not None:
                    target = broadcast(target, 0, (), 0, shape)
                    e.loop(shape, target, "+=", f"({substitute(first[k], names)}) * {bar}", ops)
        terms: list[str] = []
        extra: list[Any] = []
        d = e.d
        for (i, j), g in second.items():
            oi, oj = operands[i], operands[j]
            if not g or isinstance(oi, float) or isinstance(oj, float):
                continue  # a number operand: no tangent
            if oi.d1 is None or oj.d1 is None:
                continue
            coefficient = e.fresh(shape)  # ybar g_ij, once per element
            e.loop(shape, coefficient, "=", f"{bar} * ({substitute(g, names)})", ops)
            places = len(extra)
            extra += [
                broadcast(coefficient, 0, (), 2, shape),
                broadcast(oi.d1, 1, (0,), 2, shape),
                broadcast(oj.d1, 1, (1,), 2, shape),
            ]
            terms.append(f"{{{places}}} * {{{places + 1}}} * {{{places + 2}}}")
        if terms:
            e.reduce((d, d), shape, self.H, " + ".join(terms), extra, True)

    def sum(self, node: Any, ybar: View) -> None:
        x = self.b.values[node.args[0].index]
        rank = len(x.v.shape)
        dims = tuple(node.args[1])
        dims = tuple(sorted({dim % rank for dim in dims} if dims else set(range(rank))))
        scale = float(node.args[2])
        source = spread(ybar, 0, x.v.shape, dims)
        self.add(x.v, source, x.v.shape, "" if scale == 1.0 else f"{scale!r} * ")

    def mm(self, node: Any, ybar: View) -> None:
        b, e = self.b, self.e
        bias, A, B, beta, alpha = b.mm_operands(node)
        shape = node.shape
        if bias is not None and bias.d1 is not None and beta != 0.0:
            self.add(bias.v, ybar, shape, "" if beta == 1.0 else f"{beta!r} * ")
        if A.d1 is not None and self.adjoint(A.v) is not None:  # Abar += alpha ybar B'
            b.contraction(self.adjoint(A.v), 0, ybar, _transpose(B.v), (), (), alpha)
        if B.d1 is not None and self.adjoint(B.v) is not None:  # Bbar += alpha A' ybar
            b.contraction(self.adjoint(B.v), 0, _transpose(A.v), ybar, (), (), alpha)
        if A.d1 is not None and B.d1 is not None:  # the bilinear term
            d = e.d
            T = e.fresh((d, d, *shape))
            e.loop(T.shape, T, "=", "0.0", [], True)
            b.contraction(T, 2, A.d1, B.d1, (0,), (1,), alpha)
            b.contraction(T, 2, A.d1, B.d1, (1,), (0,), alpha)
            ops = [broadcast(ybar, 0, (), 2, shape), T]
            e.reduce((d, d), shape, self.H, "{0} * {1}", ops, True)


def _transpose(v: View) -> View:
    return View(v.buf, v.offset, (v.shape[1], v.shape[0]), (v.strides[1], v.strides[0]))
