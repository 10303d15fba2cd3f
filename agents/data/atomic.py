"""Atomic file writes: a run killed at any moment leaves the old file or the new one.

The content goes to a temporary file in the target's folder, is flushed and fsynced, and is
renamed over the target (``os.replace``, atomic on POSIX within a file system), with the
mode a plain ``open`` would give it (0666 less the umask); on any error the temporary file
is removed and the target is left as it was. A failed write (a full disk, a read-only
folder, a target that is a folder) raises an ``OSError`` that names the target and says
that the file there before is unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_json"]


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _os_error_in(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error``: itself, or one it was raised from or while handling
    (``torch.save`` reports a failed write as a ``RuntimeError`` from its zip writer)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically.

    Args:
        path: the target (its folder is created if needed).
        write: called with the temporary file, opened for binary writing.

    Returns:
        The target path.

    Raises:
        OSError: the write failed (same errno), naming ``path``; the target is unchanged.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary name only
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except Exception as error:
        failed = _os_error_in(error)
        if failed is None:
            raise
        reason = failed.strerror or str(failed)
        raise OSError(
            failed.errno,
            f"cannot write {str(path)!r} ({reason}); the file there before, if any, is unchanged",
        ) from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(path: str | Path, value: Any, indent: int | None = None) -> Path:
    """``atomic_write`` of ``value`` as JSON (UTF-8)."""
    text = json.dumps(value, indent=indent)
    return atomic_write(path, lambda file: file.write(text.encode()))
