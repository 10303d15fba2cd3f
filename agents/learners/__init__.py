"""The learners of an experiment: the MPC policy's learned parts and the paper's baselines
(``nn``, ``sysid``).
"""
