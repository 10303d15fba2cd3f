"""The on-disk cache of the compiled kernels, keyed on every kernel source.

numba caches a compiled function per source file and invalidates an entry only when that
file changes; a kernel that calls into another file keeps its old copy of the callee after
that file changes (an upgrade, a checkout, an edit). Here every kernel of a package is
cached under one folder named by a hash of all the package's sources, the files of the
same top-level package they import from (module constants are compiled in), the package
version and numba's version:

    <cache root>/numba/<hash>/

so an edit anywhere in those sources starts a new folder, and folders of other code (another
checkout, an older version) never serve this one. The cache root is ``MPC_POLICY_CACHE_DIR``
if set, else the platform's user cache folder (``$XDG_CACHE_HOME/mpc_policy``, by default
``~/.cache/mpc_policy``; ``~/Library/Caches/mpc_policy`` on macOS,
``%LOCALAPPDATA%\\mpc_policy\\Cache`` on Windows). Where that folder cannot be written, the
kernels compile in every process, uncached.

The first compilation in a process is announced once, at level INFO, on this module's
logger (a child of ``mpc_policy``), which the command line shows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numba
from numba import njit
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

from mpc_policy.numerics.compiled._compiler import (
    KernelCompiler,
    LinkOnlyCompiler,
    VectorizingCompiler,
    collector_paused,
)

__all__ = ["CACHE_ENVIRONMENT_VARIABLE", "cache_directory", "cache_root", "kernel"]

CACHE_ENVIRONMENT_VARIABLE = "MPC_POLICY_CACHE_DIR"
_HASH_LENGTH = 16
# CPU seconds to compile every kernel (2-core machine, `mpc-policy warmup` with an empty
# cache: 29.6-30.4 s for both dtypes, the compiled box-DDP solve and the command's imports
# included); quoted in the message
_COMPILE_SECONDS = 30

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """The folder of mpc_policy's caches: ``MPC_POLICY_CACHE_DIR`` or the user cache folder."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE, "").strip()
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "mpc_policy" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mpc_policy"
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "mpc_policy"


def _package_root(folder: Path) -> Path:
    """The top-level package folder containing ``folder`` (a package itself)."""
    while (folder.parent / "__init__.py").exists():
        folder = folder.parent
    return folder


def _imported_files(source: str, package: str, root: Path) -> set[Path]:
    """Files of the top-level package ``root`` that a module of ``package`` imports from."""
    files = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != root.name:
                continue
            path = root.parent.joinpath(*parts)
            for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                if candidate.is_file():
                    files.add(candidate)
    return files


@functools.cache
def _source_hash(folder: Path) -> str:
    """Hash of every source the kernels of the package ``folder`` are compiled from."""
    root = _package_root(folder)
    package = ".".join(folder.relative_to(root.parent).parts)
    sources = set(folder.glob("*.py"))
    for path in sorted(sources):
        sources |= _imported_files(path.read_text(encoding="utf-8"), package, root)
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(str(path.relative_to(root.parent)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    version = (
        sys.modules[root.name].__dict__.get("__version__", "") if root.name in sys.modules else ""
    )
    digest.update(f"{version}\0{numba.__version__}".encode())
    return digest.hexdigest()[:_HASH_LENGTH]


def cache_directory(folder: Path | None = None) -> Path:
    """Where the kernels of the package ``folder`` (default: this one) are cached."""
    folder = Path(__file__).parent if folder is None else folder
    return cache_root() / "numba" / _source_hash(folder.resolve())


class _KernelLocator(_CacheLocator):
    """numba cache locator: the hash-keyed folder of the kernel's package."""

    def __init__(self, py_func: Callable[..., Any], py_file: str) -> None:
        folder = Path(py_file).resolve().parent
        self._path = cache_directory(folder)
        self._stamp = _source_hash(folder)
        self._lineno = py_func.__code__.co_firstlineno

    def ensure_cache_path(self) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=self._path).close()  # writable

    def get_cache_path(self) -> str:
        return str(self._path)

    def get_source_stamp(self) -> str:
        return self._stamp

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func: Callable[..., Any], py_file: str) -> _KernelLocator | None:
        if not os.path.isfile(py_file):
            return None
        locator = cls(py_func, py_file)
        try:
            locator.ensure_cache_path()
        except OSError:
            return None
        return locator


class _KernelCacheImpl(CompileResultCacheImpl):
    _locator_classes: ClassVar[list[type[_CacheLocator]]] = [_KernelLocator]


class _KernelCache(FunctionCache):
    """A numba function cache in the hash-keyed folder that announces a first compilation."""

    _impl_class = _KernelCacheImpl

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        data = super().load_overload(sig, target_context)
        if data is None:
            _announce()
        return data

    def save_overload(self, sig: Any, data: Any) -> None:
        with collector_paused():
            super().save_overload(sig, data)


_announced = False


def _announce() -> None:
    global _announced
    if _announced:
        return
    _announced = True
    logger.info(
        "mpc_policy: compiling the solver's CPU kernels (numba), once per install: up to "
        "about %d s of CPU for every kernel of both dtypes; cached in %s (`mpc-policy "
        "warmup` compiles ahead)",
        _COMPILE_SECONDS,
        cache_directory(),
    )


def kernel(loop_vectorize: bool = False, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)`` with the on-disk cache of this module (never ``cache=``).

    Kernels compile with numpy's error model (a division by zero gives inf or NaN, as on the
    torch path) and without LLVM's loop vectorizer (``_compiler.KernelCompiler``) unless
    asked. A kernel without its Python entry (``no_cpython_wrapper=True``: only other
    kernels call it) is compiled for linking alone (``_compiler.LinkOnlyCompiler``) and not
    cached: the kernels called from Python hold its code, optimized and cached with theirs.

    Args:
        loop_vectorize: LLVM's loop vectorizer for this kernel and the code it links (a
            kernel called from Python).
        options: numba.njit's options (``nogil``, ``fastmath``, ``inline``, ...).
    """
    if "cache" in options:
        raise TypeError("kernel: the cache is always on; remove the argument 'cache'")
    options.setdefault("error_model", "numpy")
    if options.get("no_cpython_wrapper"):
        if loop_vectorize:
            raise TypeError("kernel: loop_vectorize is for kernels called from Python")
        options.setdefault("no_cfunc_wrapper", True)
        return njit(pipeline_class=LinkOnlyCompiler, **options)
    compiler = VectorizingCompiler if loop_vectorize else KernelCompiler

    def decorate(function: Callable[..., Any]) -> Any:
        dispatcher = njit(pipeline_class=compiler, **options)(function)
        try:
            dispatcher._cache = _KernelCache(function)
        except RuntimeError:  # no writable cache folder: compile in every process
            pass
        return dispatcher

    return decorate
