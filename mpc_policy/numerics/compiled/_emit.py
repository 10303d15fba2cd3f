"""The loop nests of generated code: strided views into a scratch vector, and an emitter.

Every tensor of a traced graph is a ``View`` (buffer name, offset, shape, strides) into the
scratch vector w or the parameters p; views, transposes and broadcasts (stride 0) change
only the description. ``Emitter.loop`` writes one statement over a loop shape, target and
operands broadcast to it, as nested loops or, up to ``UNROLL`` elements, unrolled with
constant indices; ``tri`` restricts two leading direction dims to k1 <= k2 (symmetric second
derivatives). Used by ``codegen``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "UNROLL",
    "Emitter",
    "UnsupportedGraph",
    "View",
    "access",
    "broadcast",
    "contiguous",
    "flat",
    "numel",
    "spread",
    "substitute",
    "view_op",
]

UNROLL = 16


class UnsupportedGraph(ValueError):
    """A graph the generator cannot emit (the message names the operation)."""


@dataclass(frozen=True)
class View:
    buf: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@dataclass
class Emitter:
    n: int
    m: int
    order: int
    lines: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def d(self) -> int:
        return self.n + self.m

    def fresh(self, shape: tuple[int, ...]) -> View:
        view = View("w", self.size, shape, contiguous(shape))
        self.size += max(numel(shape), 1)
        return view

    def loop(
        self,
        shape: tuple[int, ...],
        target: View,
        assign: str,
        expr: str,
        ops: list,
        tri: bool = False,
    ) -> None:
        """target[i] (assign) expr(ops[k][i]) over the loop shape; target and ops are views
        already broadcast to it (or numbers). expr names the operands {0}, {1}, ...
        ``tri``: the first two dims are second-order directions (k1, k2), of which only
        k1 <= k2 is computed (second derivatives are symmetric)."""
        if numel(shape) == 0:
            return
        if numel(shape) <= UNROLL:
            for index in indices(shape):
                if tri and index[1] < index[0]:
                    continue
                values = [access(op, index) for op in ops]
                self.lines.append(f"    {access(target, index)} {assign} {expr.format(*values)}")
            return
        names, pad = self.header(shape, tri)
        values = [access(op, names) for op in ops]
        self.lines.append(f"{pad}{access(target, names)} {assign} {expr.format(*values)}")

    def header(
        self, shape: tuple[int, ...], tri: bool, depth: int = 0, first: int = 0
    ) -> tuple[list[str | int], str]:
        """The loop statements over shape (dims of size 1 fixed at 0), nested ``depth`` deep,
        index names from i{first}: index names, indent."""
        names: list[str | int] = []
        for k, size in enumerate(shape):
            if size == 1:
                names.append(0)
                continue
            start = f"i{first}, " if tri and k == 1 else ""
            self.lines.append(
                "    " + "    " * depth + f"for i{first + k} in range({start}{size}):"
            )
            names.append(f"i{first + k}")
            depth += 1
        return names, "    " + "    " * depth

    def reduce(
        self,
        outer: tuple[int, ...],
        inner: tuple[int, ...],
        target: View,
        expr: str,
        ops: list,
        tri: bool = False,
    ) -> None:
        """target[o] += sum_i expr(ops[k][o, i]) over o in outer, i in inner; target a view
        of shape outer, ops views of shape (*outer, *inner). The sum runs in a local (stores
        into w, which the operands may alias, stay out of the inner loop)."""
        if numel((*outer, *inner)) == 0:
            return
        if numel((*outer, *inner)) <= UNROLL:
            for index in indices(outer):
                if tri and index[1] < index[0]:
                    continue
                terms = [
                    expr.format(*[access(op, (*index, *j)) for op in ops]) for j in indices(inner)
                ]
                self.lines.append(f"    {access(target, index)} += {' + '.join(terms)}")
            return
        names, pad = self.header(outer, tri)
        self.lines.append(f"{pad}s = 0.0")
        inner_names, inner_pad = self.header(inner, False, len(pad) // 4 - 1, len(outer))
        values = [access(op, [*names, *inner_names]) for op in ops]
        self.lines.append(f"{inner_pad}s += {expr.format(*values)}")
        self.lines.append(f"{pad}{access(target, names)} += s")


def indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for size in shape:
        out = [(*index, i) for index in out for i in range(size)]
    return out


def access(op: View | float, index: Any) -> str:
    if not isinstance(op, View):
        return f"({float(op)!r})"
    constant = op.offset
    terms = []
    for i, stride in zip(index, op.strides, strict=True):
        if stride == 0:
            continue
        if isinstance(i, int):
            constant += i * stride
        else:
            terms.append(f"{i} * {stride}" if stride != 1 else i)
    text = " + ".join([*terms, str(constant)] if constant or not terms else terms)
    return f"{op.buf}[{text}]"


def broadcast(
    view: View | float, lead: int, places: tuple[int, ...], K: int, S: tuple[int, ...]
) -> View | float:
    """view (shape (lead dirs..., *s)) as a view of shape (K dirs..., *S): its direction dim i
    at position places[i], other direction dims and broadcast value dims of stride 0."""
    if not isinstance(view, View):
        return view
    strides = [0] * (K + len(S))
    for i, place in enumerate(places):
        strides[place] = view.strides[i]
    vshape, vstrides = view.shape[lead:], view.strides[lead:]
    offset = len(S) - len(vshape)
    if offset < 0:
        raise UnsupportedGraph(f"cannot broadcast {view.shape} to {S}")
    for k, (size, stride) in enumerate(zip(vshape, vstrides, strict=True)):
        if size != 1:
            strides[K + offset + k] = stride
    shape = (*[0] * K, *S)
    return View(view.buf, view.offset, tuple(shape), tuple(strides))


def view_op(op: str, v: View, lead: int, args: tuple[Any, ...]) -> View:
    """ATen's view operations on the value dims of v (after ``lead`` direction dims)."""
    shape, strides, offset = list(v.shape), list(v.strides), v.offset
    rank = len(shape) - lead
    if op == "select":
        dim = args[0] % rank + lead
        index = args[1] % shape[dim]
        offset += index * strides[dim]
        del shape[dim], strides[dim]
    elif op == "slice":
        dim = args[0] % rank + lead
        size = shape[dim]
        start = 0 if args[1] is None else args[1]
        end = size if args[2] is None else args[2]
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, start), size)
        step = args[3]
        offset += start * strides[dim]
        shape[dim] = (end - start + step - 1) // step
        strides[dim] *= step
    elif op == "unsqueeze":
        dim = args[0] % (rank + 1) + lead
        shape.insert(dim, 1)
        strides.insert(dim, 0)
    elif op == "squeeze":
        dims = (
            {d % rank + lead for d in args[0]}
            if args[0] is not None
            else set(range(lead, len(shape)))
        )
        keep = [k for k in range(len(shape)) if k < lead or k not in dims or shape[k] != 1]
        shape, strides = [shape[k] for k in keep], [strides[k] for k in keep]
    elif op == "permute":
        order = list(range(lead)) + [d % rank + lead for d in args[0]]
        shape, strides = [shape[k] for k in order], [strides[k] for k in order]
    elif op == "expand":
        sizes = list(args[0])
        new = len(sizes) - rank
        head_shape, head_strides = shape[:lead], strides[:lead]
        tail_shape, tail_strides = [1] * new + shape[lead:], [0] * new + strides[lead:]
        for k, size in enumerate(sizes):
            if size != -1 and tail_shape[k] == 1 and size != 1:
                tail_shape[k], tail_strides[k] = size, 0
        shape, strides = head_shape + tail_shape, head_strides + tail_strides
    return replace(v, offset=offset, shape=tuple(shape), strides=tuple(strides))


def flat(v: View, lead: int, n: int) -> View:
    """The output (1, n) (or (n,)) view as (lead dirs..., n)."""
    return View(v.buf, v.offset, (*v.shape[:lead], n), (*v.strides[:lead], v.strides[-1]))


def spread(target: View, level: int, shape: tuple[int, ...], dims: tuple[int, ...]) -> View:
    """A sum's target (level direction dims, then the kept dims) seen on the summed source's
    value shape, stride 0 along the reduced dims ``dims`` (sorted, non-negative)."""
    rank = len(shape)
    kept = [k for k in range(rank) if k not in dims]
    strides = list(target.strides[:level]) + [0] * rank
    tail = target.strides[level:]
    keepdim = len(target.shape) - level == rank
    for j, k in enumerate(kept):
        strides[level + k] = tail[k] if keepdim else tail[j]
    return View(target.buf, target.offset, (*target.shape[:level], *shape), tuple(strides))


def substitute(template: str, names: dict[str, str]) -> str:
    """The rule's template with a, b, c, y replaced by {k} placeholders."""
    out, token = [], ""
    for ch in template + " ":
        if ch.isalnum() or ch in "._":
            token += ch
            continue
        if token:
            out.append(names.get(token, token))
            token = ""
        out.append(ch)
    return "".join(out).strip()
