"""A matplotlib frame of a pole on a pivot, shared by the ``env_dx`` models' ``get_frame``."""

from __future__ import annotations

from typing import Any


def pole_frame(pivot: float, tip_x: float, tip_y: float, half_width: float, ax: Any = None) -> Any:
    """Draw the pole from (pivot, 0) to (pivot + tip_x, tip_y); returns (fig, ax).

    Args:
        pivot: horizontal position of the pivot.
        tip_x, tip_y: the pole's end relative to the pivot.
        half_width: the axes span [-half_width, half_width] both ways.
        ax: matplotlib axes to draw on; a new 6x6 figure if None.
    """
    try:
        import matplotlib.pyplot as plt  # only the drawing needs matplotlib
    except ImportError as error:
        raise ImportError(
            'get_frame needs matplotlib, which is not installed: pip install "mpc-policy[plot]"'
        ) from error

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6))
    else:
        fig = ax.get_figure()
    ax.plot((pivot, pivot + tip_x), (0.0, tip_y), color="k")
    ax.set_xlim((-half_width, half_width))
    ax.set_ylim((-half_width, half_width))
    return fig, ax
