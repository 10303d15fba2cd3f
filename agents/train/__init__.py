"""Training: behaviour cloning's trainer, the imitation objectives and the sysid baseline's,
the optimizer and its schedule, checkpoints, the run's guards and its metrics.
"""
