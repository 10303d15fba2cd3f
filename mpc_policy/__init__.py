"""mpc-policy: differentiable box-constrained MPC as a learnable PyTorch policy class.

Implements "Differentiable MPC for End-to-end Planning and Control" (Amos et al., 2018).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpc_policy.costs import GoalWeightedCost, QuadraticCost
    from mpc_policy.dynamics import AffineDynamics
    from mpc_policy.lqr import lqr_solve
    from mpc_policy.mpc import MPC
    from mpc_policy.numerics.box_qp import BoxQPResult, box_qp
    from mpc_policy.options import MPCOptions
    from mpc_policy.policy import MPCPolicy
    from mpc_policy.solution import (
        ConstraintReport,
        ConvergenceError,
        Solution,
        SolverInfo,
        Status,
    )

# The public names load their module (and torch) on first use, so that `import mpc_policy`
# (the gym ids, the command line's --help) costs no torch import.
_LAZY = {
    "BoxQPResult": "numerics.box_qp",
    "box_qp": "numerics.box_qp",
    "ConstraintReport": "solution",
    "GoalWeightedCost": "costs",
    "QuadraticCost": "costs",
    "AffineDynamics": "dynamics",
    "lqr_solve": "lqr",
    "MPC": "mpc",
    "MPCOptions": "options",
    "MPCPolicy": "policy",
    "ConvergenceError": "solution",
    "Solution": "solution",
    "SolverInfo": "solution",
    "Status": "solution",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "MPC",
    "AffineDynamics",
    "BoxQPResult",
    "ConstraintReport",
    "ConvergenceError",
    "GoalWeightedCost",
    "MPCOptions",
    "MPCPolicy",
    "QuadraticCost",
    "Solution",
    "SolverInfo",
    "Status",
    "box_qp",
    "lqr_solve",
]

__version__ = "0.1.0"

# One import of the package is enough for gymnasium.make("mpc_policy/Pendulum-v0"): the
# environments register themselves (by entry-point strings: no torch) when mpc_policy.envs
# is imported, after the lazy names above exist.
import mpc_policy.envs  # noqa: E402, F401
