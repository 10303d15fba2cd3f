"""YAML config files with named profiles and ``section.key=value`` overrides.

Every config file of this project (the ``mpc-policy`` experiments and the paper's sweeps)
is read here: a mapping at the top level, optionally with ``profiles`` whose entries are
deep-merged over the top level (e.g. a ``quick`` profile with a tiny budget), then
command-line overrides ``section.key=value`` (the value read as YAML). Errors name the file,
the line of a syntax error, the profile or the override.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["merge", "parse_override", "read_profile"]


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: mappings deep-merged, other values replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"train.epochs=5"`` as the nested mapping ``{"train": {"epochs": 5}}``."""
    if "=" not in text:
        raise ValueError(f"--set: expected 'section.key=value', received {text!r}")
    path, raw = text.split("=", 1)
    try:
        value: Any = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(
            f"--set {path.strip()}: the value {raw!r} is not YAML ({reason})"
        ) from None
    for part in reversed(path.strip().split(".")):
        value = {part: value}
    return value


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"config {path}: YAML syntax error{where}: {reason}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    return raw


def read_profile(
    path: str | Path, profile: str | None = None, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read a config file, merge a profile over its top level, then the overrides.

    Args:
        path: the YAML file.
        profile: a name under the file's ``profiles`` (None: the top level as written).
        overrides: e.g. ``["train.epochs=2", "evaluate.gif=true"]``.

    Returns:
        The merged mapping (without ``profiles``) and the profile's own entries (None
        without a profile).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a YAML syntax error, a profile the file does not have, a bad override.
    """
    path = Path(path)
    raw = _read(path)
    profiles = raw.pop("profiles", None) or {}
    chosen: dict[str, Any] | None = None
    if profile is not None:
        if profile not in profiles:
            raise ValueError(
                f"profile: {profile!r} is not in {path}; the profiles are {sorted(profiles)}"
            )
        chosen = dict(profiles[profile] or {})
        raw = merge(raw, chosen)
    for text in overrides:
        raw = merge(raw, parse_override(text))
    return raw, chosen
