"""``install()``: make ``import mpc`` resolve to ``mpc_policy.compat``.

mpc.pytorch's modules are imported as ``mpc``, ``mpc.mpc``, ``mpc.util``, ``mpc.pnqp``,
``mpc.lqr_step``, ``mpc.dynamics``, ``mpc.torch_numdiff``, ``mpc.env_dx``,
``mpc.env_dx.pendulum`` and ``mpc.env_dx.cartpole``. ``install()`` puts this package's
module of each name into ``sys.modules`` under that name, so unchanged user code (and
``from mpc import mpc, util``) runs on this package's solver; ``uninstall()`` puts back
whatever was there before.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["ALIASES", "install", "uninstall"]

ALIASES: dict[str, str] = {
    "mpc": "mpc_policy.compat",
    "mpc.mpc": "mpc_policy.compat.mpc",
    "mpc.util": "mpc_policy.compat.util",
    "mpc.pnqp": "mpc_policy.compat.pnqp",
    "mpc.lqr_step": "mpc_policy.compat.lqr_step",
    "mpc.dynamics": "mpc_policy.compat.dynamics",
    "mpc.torch_numdiff": "mpc_policy.compat.torch_numdiff",
    "mpc.env_dx": "mpc_policy.compat.env_dx",
    "mpc.env_dx.pendulum": "mpc_policy.compat.env_dx.pendulum",
    "mpc.env_dx.cartpole": "mpc_policy.compat.env_dx.cartpole",
}
_replaced: dict[str, ModuleType | None] = {}


def install() -> None:
    """Alias mpc.pytorch's module names to this package's modules in ``sys.modules``.

    Call it before the code that imports ``mpc``. A module already imported under one of
    those names (mpc.pytorch itself, say) is set aside and comes back with ``uninstall()``;
    objects taken from it before the call keep pointing at it. Calling it twice is harmless.
    """
    for name, target in ALIASES.items():
        module = importlib.import_module(target)
        current = sys.modules.get(name)
        if current is module:
            continue
        _replaced.setdefault(name, current)
        sys.modules[name] = module


def uninstall() -> None:
    """Undo ``install()``: restore the modules it replaced (or remove the aliases)."""
    for name, previous in _replaced.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
    _replaced.clear()
