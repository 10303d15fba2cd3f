"""Training: behaviour cloning's trainer, the imitation objectives, the optimizer and its
schedule, checkpoints, the run's guards and its metrics.
"""
