"""Drop-in replacement for mpc.pytorch 0.0.6 (PyPI ``mpc``), solved by ``mpc_policy``.

Switch with one import line::

    from mpc_policy.compat import mpc        # instead of: from mpc import mpc

    x, u, costs = mpc.MPC(n_state, n_ctrl, T, u_lower, u_upper, lqr_iter=20)(
        x_init, mpc.QuadCost(C, c), mpc.LinDx(F, f)
    )

``from mpc_policy.compat.mpc import MPC, QuadCost, LinDx, GradMethods`` works as well. The
arguments, the time-major shapes [T, B, ...] and the return value (x, u, costs) are those
of mpc.pytorch; the deliberate differences are listed in docs/coming-from-mpc-pytorch.md.
"""

from mpc_policy.compat import mpc

__all__ = ["mpc"]
