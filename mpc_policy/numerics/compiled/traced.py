"""Traced dynamics inside the compiled kernels: generated C functions called by address.

``codegen.generate`` writes the step, Jacobian and curvature of a traced module as source;
``compile_traced`` compiles it to three numba ``cfunc``s of one C signature and returns
their addresses, which ride in ``Twins`` as plain integers. ``call`` (an intrinsic) calls such
an address from inside ``ddp._solve``: the kernel compiles once for every traced model, and a
new model costs only its own small functions.

The generated source is its own cache key: it is written once to
``<cache root>/numba/traced/<hash>.py`` (hash of the source and numba's version, never
rewritten) and compiled with numba's own file cache beside it, so a later process loads the
machine code. Where the cache folder cannot be written, the source is compiled in memory,
once per process. A first compilation on a machine is announced at level INFO. Either
way a process compiles a given source at most once (``_compiled``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Any, NamedTuple

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from mpc_policy.numerics.compiled._cache import cache_root
from mpc_policy.numerics.compiled.codegen import SIGNATURE

__all__ = ["TracedFunctions", "call", "compile_traced"]

logger = logging.getLogger(__name__)


class TracedFunctions(NamedTuple):
    """The compiled functions of a traced model: addresses (step, jacobian, curvature), the
    scratch size, and the cfuncs themselves (kept alive while the addresses are used)."""

    addresses: tuple[int, int, int]
    work: int
    cfuncs: tuple[Any, ...]


@intrinsic
def call(typingctx, address, p, x, u, w, t, a, b):
    """address(p, x, u, w, t, a, b): the generated function at ``address`` on the data of
    C-contiguous float64 arrays p, x, u, w, a, b and the row t."""
    for array in (p, x, u, w, a, b):
        if not (
            isinstance(array, types.Array) and array.dtype == types.float64 and array.layout == "C"
        ):
            return None
    sig = types.void(address, p, x, u, w, t, a, b)

    def codegen(context, builder, signature, args):
        double = ir.DoubleType().as_pointer()
        i64 = ir.IntType(64)
        pointers = []
        for array_type, value in zip(signature.args[1:], args[1:], strict=True):
            if isinstance(array_type, types.Array):
                pointers.append(
                    cgutils.create_struct_proxy(array_type)(context, builder, value).data
                )
            else:
                pointers.append(context.cast(builder, value, array_type, types.int64))
        function_type = ir.FunctionType(ir.VoidType(), [double] * 4 + [i64] + [double] * 2)
        target = builder.inttoptr(args[0], function_type.as_pointer())
        builder.call(target, pointers)
        return context.get_dummy_value()

    return sig, codegen


_compiled: dict[str, TracedFunctions] = {}


def _header(cache: bool) -> str:
    return (
        "import math\n\nfrom numba import cfunc, njit\n\n"
        f"_DECORATE = cfunc({SIGNATURE!r}, cache={cache}, error_model='numpy', "
        "fastmath={'reassoc', 'contract'})\n"
        "_HELPER = njit(error_model='numpy', fastmath={'reassoc', 'contract'})\n\n\n"
    )


def _load(source: str, key: str) -> Any:
    """The module of the generated source: from the cache folder, else in memory."""
    folder = cache_root() / "numba" / "traced"
    path = folder / f"traced_{key}.py"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            logger.info(
                "mpc_policy: compiling a traced dynamics module's step and derivatives (numba), "
                "once per machine: a few seconds of CPU; cached in %s",
                folder,
            )
            handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(_header(True) + source)
            os.replace(temporary, path)  # never rewritten: numba's stamp stays valid
    except OSError:
        namespace: dict[str, Any] = {}
        exec(compile(_header(False) + source, f"<traced {key}>", "exec"), namespace)
        return _Namespace(namespace)
    name = f"mpc_policy_traced_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache rebuilds the functions' globals by name
    spec.loader.exec_module(module)
    return module


class _Namespace:
    def __init__(self, namespace: dict[str, Any]) -> None:
        self.__dict__.update(namespace)


def compile_traced(source: str, work: int) -> TracedFunctions:
    """The compiled step, Jacobian and curvature of ``codegen.generate``'s source.

    Args:
        source: the generated functions' source.
        work: the scratch size they need.
    """
    text = f"{_header(True)}{source}\0{numba.__version__}"
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    done = _compiled.get(key)
    if done is None:
        module = _load(source, key)
        cfuncs = (module.step, module.jacobian, module.curvature)
        addresses = (cfuncs[0].address, cfuncs[1].address, cfuncs[2].address)
        done = _compiled[key] = TracedFunctions(addresses, work, cfuncs)
    return done
