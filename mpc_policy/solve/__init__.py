"""Driving a solve: the box-DDP loop in named phases (``ddp``, with ``line_search``), the
rollout, the per-element health report, the augmented Lagrangian of constrained problems, and
the choice of the numerics' backend (``backend``).
"""
