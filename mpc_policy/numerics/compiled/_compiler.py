"""numba's compiler as the kernels use it: no loop vectorizer, link-only callees.

``KernelCompiler`` is numba's nopython compiler with LLVM's loop vectorizer off while a
kernel compiles (with its callees). The kernels' loops run over the problem's sizes (n, m
of a few) and time steps with a recursion between them; vectorized copies of them, with
their run-time checks and remainder loops, made no forward kernel faster (B = 1 and B =
256, both dtypes, measured side by side) and were about a tenth of the CPU time of
compiling every kernel. The implicit backward, whose loops run over eight elements at a
time, keeps it (``VectorizingCompiler``, ``kernel(loop_vectorize=True)``).

``LinkOnlyCompiler`` compiles a kernel that only other kernels call. numba compiles every
jitted function to a library of its own: its module optimized with its callees linked in,
then emitted as machine code (and saved to the on-disk cache), even when the function is
only ever called from other kernels. Each caller then links a copy of that library into its
own module, optimizes the whole again and emits it again: a callee three calls deep (the box
QP inside the Riccati recursion inside the box-DDP element solve inside the batch loop) was
optimized and emitted at every level. A kernel declared without its Python entry
(``no_cpython_wrapper=True``) has no use of its own machine code: nothing calls it from
Python, and its callers hold copies of its code. It is lowered into a ``_LinkOnlyLibrary``:
the function-level optimizations run as before (on each function as it is lowered) and the
library is ready to be linked; the whole-module optimization and the machine code are left
to the kernel called from Python, which optimizes every callee once with its callers
(inlining across them as before) and is the one saved to the cache. This took the CPU time
of compiling every kernel from 55 s to 40 s (``docs/solver.md``).

Both rely on numba's compiler internals (``CPUCodeLibrary``, the pass pipeline,
``config.LOOP_VECTORIZE`` read as pass managers are built), as the cache locator of
``_cache`` does; the cache key holds numba's version.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

from numba.core import config
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import Compiler, DefaultPassBuilder
from numba.core.compiler_machinery import LoweringPass, register_pass
from numba.core.typed_passes import AnnotateTypes

__all__ = ["KernelCompiler", "LinkOnlyCompiler", "VectorizingCompiler", "collector_paused"]


class _LinkOnlyLibrary(JITCodeLibrary):
    """A code library that other libraries link and that is never executed on its own."""

    def _optimize_final_module(self) -> None:
        """Nothing here: the library that links this one optimizes it with its caller."""

    def _finalize_final_module(self) -> None:
        """Checked and frozen for linking, not added to the JIT engine (no machine code)."""
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = True

    def get_pointer_to_function(self, name: str) -> int:
        """0, as for a symbol the library does not define: nothing of it is executable."""
        self._ensure_finalized()
        return 0

    @property
    def codegen(self) -> Any:
        """The codegen, but for ``set_env``: no environment of a never-emitted function is
        set (the copies its callers link carry their own)."""
        return _EnvironmentUnset(self._codegen)


class _EnvironmentUnset:
    """A codegen whose ``set_env`` does nothing; every other attribute is the codegen's."""

    def __init__(self, codegen: Any) -> None:
        self._codegen = codegen

    def set_env(self, env_name: str, env: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codegen, name)


@register_pass(mutates_CFG=False, analysis_only=False)
class _UseLinkOnlyLibrary(LoweringPass):
    """Gives the function a ``_LinkOnlyLibrary`` before numba's lowering creates a plain one."""

    _name = "mpc_policy_link_only_library"

    def __init__(self) -> None:
        LoweringPass.__init__(self)

    def run_pass(self, state: Any) -> bool:
        if state.library is None:
            library = _LinkOnlyLibrary(state.targetctx.codegen(), state.func_id.func_qualname)
            library.enable_object_caching()
            state.library = library
        return False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused meanwhile (and restored as it was): a
    compilation allocates millions of small objects (numba's and llvmlite's IR, the
    serialized library of a cache entry), and the collections they set off scanned them
    again and again (about 4 s of the 34 s of compiling every kernel)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@contextlib.contextmanager
def _loop_vectorizer(on: bool) -> Iterator[None]:
    """LLVM's loop vectorizer on or off for the pass managers built meanwhile (numba holds
    its compiler lock during a compilation: no other compiles in between)."""
    was = config.LOOP_VECTORIZE
    config.LOOP_VECTORIZE = int(on)
    try:
        yield
    finally:
        config.LOOP_VECTORIZE = was


class KernelCompiler(Compiler):
    """numba's nopython compiler, without the loop vectorizer and the cyclic garbage
    collector while the kernel and its callees compile."""

    loop_vectorize = False

    def compile_extra(self, func: Any) -> Any:
        with _loop_vectorizer(self.loop_vectorize), collector_paused():
            return super().compile_extra(func)


class VectorizingCompiler(KernelCompiler):
    """``KernelCompiler`` with the loop vectorizer on, for the kernel and what it links:
    the implicit backward's loops over d of eight interleaved elements ran 8 % slower in
    float32 without it (B = 256)."""

    loop_vectorize = True


class LinkOnlyCompiler(KernelCompiler):
    """``KernelCompiler``, lowering into a ``_LinkOnlyLibrary``."""

    def define_pipelines(self) -> list[Any]:
        pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pipeline.add_pass_after(_UseLinkOnlyLibrary, AnnotateTypes)
        pipeline.finalize()
        return [pipeline]
