"""Where a result came from: the package version, hashes of its sources, the git commit.

A stored sweep trial records the ``provenance()`` of the code that ran it, so a summary can
say which code produced its numbers and a sweep can tell a trial run on another solver
(``solver_sources`` differs) from one it may reuse as it is.

    package_version   the installed distribution's version ("mpc-policy"), or None
    solver_sources    sha256 (16 hex digits) of the solver's Python sources: every ``.py``
                      under the ``mpc_policy`` package except its ``agents`` and ``envs``
    sources           the same over the whole package (solver, ``envs``, ``agents``)
    git_commit        the commit of the checkout the package is imported from, with
                      "-dirty" when its sources differ from it; None outside a checkout

The hashes read file contents only, sorted, not their paths: moving a file into another
folder leaves them unchanged, editing one changes them.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["provenance", "sources_hash"]

LEARNING_FOLDERS = ("agents", "envs")  # links to ../agents and ../envs in a checkout


def sources_hash(paths: list[Path]) -> str:
    """sha256 (16 hex digits) of the contents of ``paths``, independent of their names and
    order."""
    digests = sorted(hashlib.sha256(path.read_bytes()).hexdigest() for path in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def _package_root() -> Path:
    import mpc_policy

    return Path(mpc_policy.__file__).resolve().parent


def _sources(root: Path) -> tuple[list[Path], list[Path]]:
    """The package's ``.py`` files (links followed, each once): the solver's, and all."""
    learning = [(root / name).resolve() for name in LEARNING_FOLDERS]
    files: set[Path] = set()
    for folder in [root, *learning]:
        if folder.is_dir():
            files.update(
                path.resolve() for path in folder.rglob("*.py") if "__pycache__" not in path.parts
            )
    solver = [p for p in files if not any(p.is_relative_to(f) for f in learning)]
    return sorted(solver), sorted(files)


def _git_commit(root: Path) -> str | None:
    """HEAD of the checkout holding ``root`` ("-dirty" if its tracked sources changed)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        folders = [str((root / name).resolve()) for name in LEARNING_FOLDERS]
        dirty = subprocess.run(
            ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", ".", *folders],
            capture_output=True,
            timeout=30,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """The provenance of the code running in this process (computed once)."""
    root = _package_root()
    try:
        version: str | None = metadata.version("mpc-policy")
    except metadata.PackageNotFoundError:
        version = None
    solver, everything = _sources(root)
    return {
        "package_version": version,
        "solver_sources": sources_hash(solver),
        "sources": sources_hash(everything),
        "git_commit": _git_commit(root),
    }
