"""What the ``env_dx`` models share: the parameter check, the quadratic goal cost of
``get_true_obj`` and the matplotlib frame of a pole on a pivot."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_params(params: Any, size: int) -> Tensor:
    """The model's parameters, a tensor of shape (size,)."""
    if not isinstance(params, Tensor) or params.shape != (size,):
        received = tuple(params.shape) if isinstance(params, Tensor) else type(params)
        raise ValueError(f"params: expected shape ({size},), received {received}")
    return params


def goal_cost(
    goal_weights: Tensor, goal_state: Tensor, ctrl_penalty: float, n_ctrl: int
) -> tuple[Tensor, Tensor]:
    """Diagonal weights q [n+m] and linear term p [n+m] of the cost on [x; u]: weights w on
    the state and ctrl_penalty on u, p = -sqrt(w) * goal (mpc.pytorch's ``get_true_obj``)."""
    q = torch.cat([goal_weights, ctrl_penalty * torch.ones(n_ctrl)])
    return q, torch.cat([-torch.sqrt(goal_weights) * goal_state, torch.zeros(n_ctrl)])


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
