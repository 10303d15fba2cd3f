"""sb3-contrib's TQC and CrossQ with an MPC actor (needs the optional ``sb3-contrib``).

Both are SAC's relatives: their actor is SAC's squashed Gaussian, here the MPC's
(``MPCSquashedActor``):

    a = tanh(z),  z ~ N(atanh(clamp(scale(u_1(o)), -1+eps, 1-eps)), diag(exp(log_std))^2)

and their critics are sb3-contrib's own (TQC's quantile critics, CrossQ's batch-normalized
critics; the MPC actor has no batch normalization, so CrossQ's switch of the actor's
batch-norm mode does nothing). TRPO takes ``MPCActorCriticPolicy`` (its frozen MPC
parameters are not among the parameters TRPO differentiates); RecurrentPPO is refused (the
MPC plans from each observation alone). Using a policy with an algorithm it does not serve
is refused when the algorithm builds it, naming the policy to use.

    from sb3_contrib import TQC
    from mpc_policy.sb3.contrib import MPCTQCPolicy
    model = TQC(MPCTQCPolicy, "mpc_policy/Pendulum-v0",
                policy_kwargs={"env_id": "mpc_policy/Pendulum-v0", "net_arch": [64]})
"""

from __future__ import annotations

from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.tqc.policies import TQCPolicy

from mpc_policy.sb3.off_policy import MPCSquashedActor, SquashedMPCPolicy

__all__ = ["MPCCrossQActor", "MPCCrossQPolicy", "MPCTQCPolicy"]


class MPCCrossQActor(MPCSquashedActor):
    """CrossQ's actor: ``MPCSquashedActor`` with CrossQ's batch-norm switch (it has no
    batch normalization: the switch does nothing; SB3's training mode still sets the
    phase of the solver's report)."""

    def set_bn_training_mode(self, mode: bool) -> None:
        """CrossQ's switch of the batch-norm layers' mode: there are none."""


class MPCTQCPolicy(SquashedMPCPolicy, TQCPolicy):
    """TQC policy with an ``MPCSquashedActor``. Args as ``TQCPolicy``'s plus the MPC's
    (``build_mpc``); ``log_std_init`` is the pre-tanh log standard deviation (None: log
    0.25); the actor part of ``net_arch`` is unused."""

    serves = "MPCTQCPolicy"


class MPCCrossQPolicy(SquashedMPCPolicy, CrossQPolicy):
    """CrossQ policy with an ``MPCCrossQActor``. Args as ``CrossQPolicy``'s plus the
    MPC's (``build_mpc``); ``log_std_init`` as ``MPCTQCPolicy``'s; the actor part of
    ``net_arch`` and the batch-norm settings apply to the critics only."""

    serves = "MPCCrossQPolicy"
    actor_class = MPCCrossQActor
