"""Optional dependencies: what needs an extra, and the error that says which one to install.

The core (the solver, the environments' stepping, behaviour cloning, the command line) needs
none of these; as in Gymnasium (``gymnasium[classic-control]``), drawing is an extra:

    pip install "mpc-policy[render]"   # pygame and Pillow: render_mode="rgb_array"/"human", --gif
    pip install "mpc-policy[plot]"     # matplotlib: the experiments' figures

``import_optional`` imports a module of an extra, or raises ``MissingExtraError`` (an
``ImportError``, and Gymnasium's ``DependencyNotInstalled``) naming the install command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gymnasium.error import DependencyNotInstalled

__all__ = ["EXTRAS", "MissingExtraError", "import_optional"]

# extra -> the top-level modules it provides (pyproject.toml's optional-dependencies)
EXTRAS = {"render": ("pygame", "PIL"), "plot": ("matplotlib",)}


class MissingExtraError(DependencyNotInstalled, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. "pygame.gfxdraw"), provided by the extra ``extra``.

    Args:
        module: the dotted module name.
        extra: the extra of mpc-policy that installs it, a key of ``EXTRAS``.
        purpose: what needs it, for the message (e.g. "rendering").

    Raises:
        MissingExtraError: the module cannot be imported; says
            ``pip install "mpc-policy[<extra>]"``.
    """
    if extra not in EXTRAS or module.split(".")[0] not in EXTRAS[extra]:
        raise ValueError(f"extra: {module!r} is not in any of {EXTRAS}, received {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: "
            f'pip install "mpc-policy[{extra}]"'
        ) from error
