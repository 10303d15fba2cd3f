"""The paper's ``nn`` baseline: a recurrent network from the start state to the nominal
action sequence (Amos et al., 2018, section 5.3).

As in the paper's code (locuslab/differentiable-mpc, ``imitation_nonconvex/il_exp.py``):

    y_1 = state_embedding(x)                     (MLP n -> H -> H -> H)
    (h_t, c_t) = LSTMCell(y_t, (h_{t-1}, c_{t-1}))
    u_t = decoder(c_t)                           (MLP H -> H -> H -> m, reads the cell state)
    y_{t+1} = control_embedding(u_t)             (MLP m -> H -> H -> H)

for t = 1..T, with H = 256. It is trained on the imitation loss directly (Adam, 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SequenceNetwork", "SequencePlan"]


@dataclass(frozen=True)
class SequencePlan:
    """A network's plan: the action sequences u (B, T, m); no solver, so no ``info``."""

    u: Tensor
    info: None = None


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_hidden),
        nn.ReLU(),
        nn.Linear(n_hidden, n_hidden),
        nn.ReLU(),
        nn.Linear(n_hidden, n_out),
    )


class SequenceNetwork(nn.Module):
    """LSTM policy: state x (B, n) -> action sequence (B, T, m).

    Args:
        n_state: state size n.
        n_ctrl: control size m.
        horizon: sequence length T.
        hidden_size: width H of the LSTM cell and the MLPs (256 in the paper).
    """

    def __init__(self, n_state: int, n_ctrl: int, horizon: int, hidden_size: int = 256) -> None:
        super().__init__()
        for name, value in (
            ("n_state", n_state),
            ("n_ctrl", n_ctrl),
            ("horizon", horizon),
            ("hidden_size", hidden_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        self.n_state, self.n_ctrl, self.horizon = n_state, n_ctrl, horizon
        self.state_embedding = _mlp(n_state, hidden_size, hidden_size)
        self.control_embedding = _mlp(n_ctrl, hidden_size, hidden_size)
        self.decoder = _mlp(hidden_size, hidden_size, n_ctrl)
        self.cell = nn.LSTMCell(hidden_size, hidden_size)

    def sequences(self, x: Tensor) -> Tensor:
        """Action sequences (B, T, m), in the dtype of x, for states x (B, n)."""
        if x.dim() != 2 or x.shape[1] != self.n_state:
            raise ValueError(f"x: expected shape (B, {self.n_state}), received {tuple(x.shape)}")
        dtype = next(self.decoder.parameters()).dtype
        y = self.state_embedding(x.to(dtype))
        state: tuple[Tensor, Tensor] | None = None
        controls = []
        for _ in range(self.horizon):
            state = self.cell(y, state)
            u = self.decoder(state[1])
            controls.append(u)
            y = self.control_embedding(u)
        return torch.stack(controls, dim=1).to(x.dtype)

    def plan(self, x: Tensor | np.ndarray, u_init: Tensor | None = None) -> SequencePlan:
        """The ``Planner`` interface (``mpc_policy.agents.data.rollouts``): the sequences (B, T, m)
        for inputs x (B, n); ``u_init`` is accepted and ignored (nothing to warm-start)."""
        return SequencePlan(self.sequences(torch.as_tensor(x)))

    def forward(self, obs: Tensor | np.ndarray) -> Tensor:
        """The first control (B, m) for observations (B, n) (the state itself)."""
        obs = torch.as_tensor(obs)
        if obs.dim() == 1:
            obs = obs.unsqueeze(0)
        return self.sequences(obs)[:, 0]
