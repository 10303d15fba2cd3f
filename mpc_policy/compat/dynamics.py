"""mpc.pytorch 0.0.6's ``mpc.dynamics``: dynamics modules with analytic Jacobians.

Each module maps rows x [N, n], u [N, m] (or single vectors [n], [m]) to next states [N, n]
and gives the Jacobian blocks of one step through ``grad_input(x, u) -> (R, S)``:

    R = d x_next / d x   [N, n, n],      S = d x_next / d u   [N, n, m]

``NNDynamics``: x_next = [x +] W_L s(... s(W_1 [x; u] + b_1) ...) + b_L, an MLP with an
optional passthrough of x. ``AffineDynamics``: x_next = A x + B u + c.
``CtrlPassthroughDynamics``: the state [u_prev; x] of the slew-rate penalty,
[u_prev; x] -> [u; f(x, u)] (``mpc_policy.slew_rate.SlewRateDynamics`` with ``grad_input``).
The Jacobians keep the graph to the parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from mpc_policy.compat.problem import GradInputDynamics, received
from mpc_policy.slew_rate import SlewRateDynamics

__all__ = ["ACTS", "AffineDynamics", "CtrlPassthroughDynamics", "NNDynamics"]

ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": nnf.relu,
    "elu": nnf.elu,
}


def _derivative(activation: str, z: Tensor) -> Tensor:
    """The activation's derivative, written in terms of its output z."""
    if activation == "sigmoid":
        return z * (1.0 - z)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    return torch.where(z > 0, torch.ones_like(z), z + 1.0)  # elu: exp(a) = z + 1 for a < 0


def _as_rows(x: Tensor, u: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Vectors [n], [m] as single rows [1, n], [1, m]; whether x was a vector."""
    single = x.dim() == 1
    return x.unsqueeze(0) if single else x, u.unsqueeze(0) if u.dim() == 1 else u, single


class NNDynamics(nn.Module):
    """An MLP dynamics model, x_next = [x +] MLP([x; u]).

    Args:
        n_state: n.
        n_ctrl: m.
        hidden_sizes: widths of the hidden layers.
        activation: "sigmoid", "relu" or "elu" (between layers; the output is linear).
        passthrough: add x to the output (the MLP models the change of state).
    """

    def __init__(
        self,
        n_state: int,
        n_ctrl: int,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "sigmoid",
        passthrough: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTS:
            raise ValueError(f"activation: expected one of {sorted(ACTS)}, received {activation!r}")
        sizes = [n_state + n_ctrl, *hidden_sizes, n_state]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.activation, self.passthrough = activation, passthrough
        self.zs: list[Tensor] = []

    @property
    def linears(self) -> list[nn.Linear]:
        """The layers, first layer first."""
        return [cast(nn.Linear, fc) for fc in self.fcs]

    @property
    def Ws(self) -> list[Tensor]:
        """The layers' weights [out, in], first layer first."""
        return [fc.weight for fc in self.linears]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["zs"] = []  # the cached activations are not part of the model
        return state

    def _layers(self, x: Tensor, u: Tensor) -> list[Tensor]:
        """Outputs of every layer for rows x [N, n], u [N, m] (the last one is linear)."""
        act = ACTS[self.activation]
        z, outs = torch.cat([x, u], dim=-1), []
        layers = self.linears
        for i, fc in enumerate(layers):
            z = fc(z) if i == len(layers) - 1 else act(fc(z))
            outs.append(z)
        return outs

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next states [N, n] (or [n]) for x [N, n], u [N, m] (or vectors)."""
        x, u, single = _as_rows(x, u)
        outs = self._layers(x, u)
        self.zs = outs[:-1]
        out = outs[-1] + x if self.passthrough else outs[-1]
        return out[0] if single else out

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Jacobian blocks R [N, n, n] and S [N, n, m] at rows x [N, n], u [N, m]."""
        x, u, single = _as_rows(x, u)
        n = x.shape[-1]
        hidden = self._layers(x, u)[:-1]
        layers = self.linears
        J = layers[-1].weight.expand(x.shape[0], *layers[-1].weight.shape)
        for fc, z in zip(reversed(layers[:-1]), reversed(hidden)):
            J = (J * _derivative(self.activation, z).unsqueeze(-2)) @ fc.weight
        R, S = J[..., :n], J[..., n:]
        if self.passthrough:
            R = R + torch.eye(n, dtype=R.dtype, device=R.device)
        return (R[0], S[0]) if single else (R, S)


class CtrlPassthroughDynamics(nn.Module):
    """[u_prev; x] -> [u; f(x, u)]: the augmented state of the slew-rate penalty.

    Args:
        dynamics: the module f(x [N, n], u [N, m]) -> [N, n]; its ``grad_input`` (if any)
            gives this module's.
    """

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, tilde_x: Tensor, u: Tensor) -> Tensor:
        """Next augmented states [N, m+n] (or [m+n]) for tilde_x [N, m+n], u [N, m]."""
        tilde_x, u, single = _as_rows(tilde_x, u)
        out = SlewRateDynamics(self.dynamics, u.shape[-1])(tilde_x, u)
        return out[0] if single else out

    def grad_input(self, tilde_x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """R [N, m+n, m+n] and S [N, m+n, m] from the wrapped module's ``grad_input``."""
        if not callable(getattr(self.dynamics, "grad_input", None)):
            raise TypeError(
                f"dynamics: expected a module with grad_input(x, u); "
                f"{type(self.dynamics).__name__} has none"
            )
        tilde_x, u, single = _as_rows(tilde_x, u)
        m = u.shape[-1]
        J = SlewRateDynamics(GradInputDynamics(self.dynamics), m).jacobian(tilde_x, u)
        R, S = J[..., :-m], J[..., -m:]
        return (R[0], S[0]) if single else (R, S)


class AffineDynamics(nn.Module):
    """x_next = A x + B u + c (A, B, c are kept as given, so gradients reach them).

    Args:
        A: [n, n] state matrix.
        B: [n, m] control matrix.
        c: [n] offset, or None.
    """

    def __init__(self, A: Tensor, B: Tensor, c: Tensor | None = None) -> None:
        super().__init__()
        for name, value, dims in (("A", A, 2), ("B", B, 2), ("c", c, 1)):
            if value is not None and (not isinstance(value, Tensor) or value.dim() != dims):
                expected = f"a tensor with {dims} dimensions"
                raise ValueError(f"{name}: expected {expected}, received {received(value)}")
        self.A, self.B, self.c = A, B, c

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next states [N, n] (or [n]) for x [N, n], u [N, m] (or vectors)."""
        x, u, single = _as_rows(x, u)
        out = x @ self.A.transpose(0, 1) + u @ self.B.transpose(0, 1)
        out = out if self.c is None else out + self.c
        return out[0] if single else out

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """A and B repeated for the N rows: R [N, n, n], S [N, n, m]."""
        N = x.shape[0] if x.dim() == 2 else 1
        return self.A.expand(N, *self.A.shape), self.B.expand(N, *self.B.shape)
