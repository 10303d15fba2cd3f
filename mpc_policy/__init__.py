"""mpc-policy: differentiable box-constrained MPC as a learnable PyTorch policy class.

Implements "Differentiable MPC for End-to-end Planning and Control" (Amos et al., 2018).
"""

from mpc_policy.box_qp import BoxQPResult, box_qp
from mpc_policy.costs import GoalWeightedCost, QuadraticCost
from mpc_policy.dynamics import AffineDynamics
from mpc_policy.lqr import lqr_solve
from mpc_policy.mpc import MPC
from mpc_policy.options import MPCOptions
from mpc_policy.policy import MPCPolicy
from mpc_policy.solution import ConvergenceError, Solution, SolverInfo, Status

__all__ = [
    "MPC",
    "AffineDynamics",
    "BoxQPResult",
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
# environments register themselves when mpc_policy.envs is imported (last, as they use costs).
import mpc_policy.envs  # noqa: F401
