"""mpc.pytorch 0.0.6's ``mpc.env_dx``: the pendulum and cart-pole models of its examples.

``from mpc_policy.compat.env_dx import pendulum, cartpole`` gives ``pendulum.PendulumDx``
and ``cartpole.CartpoleDx``, with mpc.pytorch's states, parameters, control bounds, costs
(``get_true_obj``) and solver settings. (mpc.pytorch's ``env_dx.control`` is a demo script,
not a module to import; ``examples/`` has this package's own.)
"""

from mpc_policy.compat.env_dx import cartpole, pendulum

__all__ = ["cartpole", "pendulum"]
