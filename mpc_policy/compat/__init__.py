"""Drop-in replacement for mpc.pytorch 0.0.6 (PyPI ``mpc``), solved by ``mpc_policy``.

Every public module of mpc.pytorch is here under the same name: ``mpc`` (the solver),
``util``, ``pnqp``, ``lqr_step``, ``dynamics``, ``torch_numdiff`` and ``env_dx``
(``pendulum``, ``cartpole``). Switch with one import line::

    from mpc_policy.compat import mpc, util     # instead of: from mpc import mpc, util

    x, u, costs = mpc.MPC(n_state, n_ctrl, T, u_lower, u_upper, lqr_iter=20)(
        x_init, mpc.QuadCost(C, c), mpc.LinDx(F, f)
    )

or leave the imports alone and call ``mpc_policy.compat.install()`` first: ``import mpc``
and ``from mpc import ...`` then resolve to these modules (``uninstall()`` undoes it). The
arguments, the time-major shapes [T, B, ...] and the return values are those of
mpc.pytorch; the deliberate differences are listed in docs/coming-from-mpc-pytorch.md.
"""

from mpc_policy.compat import (
    dynamics,
    env_dx,
    lqr_step,
    mpc,
    pnqp,
    torch_numdiff,
    util,
)
from mpc_policy.compat.alias import install, uninstall

__all__ = [
    "dynamics",
    "env_dx",
    "install",
    "lqr_step",
    "mpc",
    "pnqp",
    "torch_numdiff",
    "uninstall",
    "util",
]
