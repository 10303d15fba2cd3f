"""The learners of an experiment: the MPC policy's learned parts and the paper's baselines
(the ``nn`` network; ``sysid`` learns the MPC policy's dynamics with its own objective,
``mpc_policy.agents.train.sysid``).
"""
