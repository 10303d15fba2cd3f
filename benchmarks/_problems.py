"""Benchmark problems shared by both solvers, and a solver-independent optimality check.

Problems are built batch-first (our public convention); ``_reference.py`` transposes them to
mpc.pytorch's time-major layout. The optimality check works on the reduced problem

    J(u) = sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t,   x_1 = x_init, x_{t+1} = f(x_t, u_t),

whose projected gradient ``u - clamp(u - dJ/du, u_lower, u_upper)`` vanishes exactly at a
local optimum (a KKT point) of the box-constrained problem. It is evaluated in float64 for
any controls, whichever solver produced them; a solve counts as converged when this residual,
relative to 1 + max |dJ/du|, is at most ``KKT_TOL``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "KKT_TOL",
    "BoxLQRProblem",
    "PendulumDynamics",
    "affine_step",
    "kkt_residual",
    "pendulum_problem",
    "quadratic_cost",
    "random_box_lqr",
]

KKT_TOL = 1e-3


@dataclass
class BoxLQRProblem:
    """A batch of box-constrained problems with a quadratic cost, batch-first.

    Attributes:
        x_init: (B, n) initial states.
        C: (B, T, n+m, n+m) quadratic cost terms.
        c: (B, T, n+m) linear cost terms.
        F: (B, T-1, n, n+m) affine dynamics matrices (None for nonlinear problems).
        f: (B, T-1, n) affine dynamics offsets (None for nonlinear problems).
        u_lower: (B, T, m) lower control bounds.
        u_upper: (B, T, m) upper control bounds.
    """

    x_init: Tensor
    C: Tensor
    c: Tensor
    F: Tensor | None
    f: Tensor | None
    u_lower: Tensor
    u_upper: Tensor

    def tensors(self) -> list[Tensor]:
        """The differentiable data (x_init, C, c and, if affine, F, f)."""
        data = [self.x_init, self.C, self.c]
        if self.F is not None and self.f is not None:
            data += [self.F, self.f]
        return data

    def requiring_grad(self) -> BoxLQRProblem:
        """A copy whose differentiable data are fresh leaves with ``requires_grad``."""

        def leaf(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone().requires_grad_(True)

        return BoxLQRProblem(
            leaf(self.x_init),  # type: ignore[arg-type]
            leaf(self.C),  # type: ignore[arg-type]
            leaf(self.c),  # type: ignore[arg-type]
            leaf(self.F),
            leaf(self.f),
            self.u_lower,
            self.u_upper,
        )


def random_box_lqr(
    batch: int, n: int, m: int, T: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> BoxLQRProblem:
    """Random strictly convex box-LQR problems with many active bounds.

    After mpc.pytorch's own tests, scaled to stay well conditioned at long horizons:
    C = A A' / (n+m) + I/10, c ~ N(0, 1), F = [R, N/sqrt(m)] with R = I + 0.2 N/sqrt(n)
    divided by its spectral norm when that exceeds 1, f ~ N(0, 1), x_init ~ N(0, 1), and
    per-element bounds lower ~ -U(0, 2), upper ~ U(0, 2), which leave roughly 40-50% of the
    optimal controls at a bound (the benchmarks print the measured fraction).

    Args:
        batch: B, number of problems.
        n: state size.
        m: control size.
        T: horizon (states including x_1).
        seed: seed of the generator.
        dtype: floating dtype of the tensors.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A = randn(batch, T, n + m, n + m)
    C = A @ A.transpose(-1, -2) / (n + m) + 0.1 * torch.eye(n + m, dtype=torch.float64)
    c = randn(batch, T, n + m)
    R = torch.eye(n, dtype=torch.float64) + 0.2 * randn(batch, T - 1, n, n) / math.sqrt(n)
    # Non-expansive state transitions keep long horizons well conditioned in float32.
    R = R / torch.linalg.matrix_norm(R, ord=2).clamp(min=1.0)[..., None, None]
    F = torch.cat((R, randn(batch, T - 1, n, m) / math.sqrt(m)), dim=-1)
    f = randn(batch, T - 1, n)
    x_init = randn(batch, n)
    u_lower = -2.0 * torch.rand(batch, T, m, generator=gen, dtype=torch.float64)
    u_upper = 2.0 * torch.rand(batch, T, m, generator=gen, dtype=torch.float64)
    tensors = [x_init, C, c, F, f, u_lower, u_upper]
    return BoxLQRProblem(*(t.to(dtype) for t in tensors))


class PendulumDynamics(nn.Module):
    """Gymnasium's Pendulum-v1 step on the state (cos th, sin th, th_dot), without clipping.

    th_dot' = th_dot + (3 g / (2 l) sin th + 3 u / (m l^2)) dt,  th' = th + th_dot' dt.
    Gravity, mass and length are parameters, so gradients reach them. Accepts any leading
    batch shape: x (..., 3), u (..., 1) -> (..., 3), so both solvers can call it.
    """

    def __init__(self, dt: float = 0.05, g: float = 10.0, mass: float = 1.0, length: float = 1.0):
        super().__init__()
        self.dt = dt
        self.params = nn.Parameter(torch.tensor([g, mass, length]))

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        g, mass, length = self.params.to(x.dtype).unbind()
        cos_th, sin_th, th_dot = x.unbind(-1)
        th = torch.atan2(sin_th, cos_th)
        th_dot = th_dot + self.dt * (
            3.0 * g / (2.0 * length) * sin_th + 3.0 * u[..., 0] / (mass * length**2)
        )
        th = th + th_dot * self.dt
        return torch.stack((torch.cos(th), torch.sin(th), th_dot), dim=-1)


def pendulum_problem(
    batch: int, T: int, *, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's pendulum swing-up task as a quadratic cost.

    Cost sum_i w_i (tau_i - goal_i)^2 with w = (1, 1, 0.1, 0.001) on (cos, sin, th_dot, u) and
    the upright goal (1, 0, 0, 0), i.e. C = 2 diag(w), c = -2 w * goal (constant dropped).
    Start angle ~ U(-pi/2, pi/2) from upright, velocity ~ U(-1, 1).

    Returns:
        x_init (B, 3), C (B, T, 4, 4), c (B, T, 4).
    """
    gen = torch.Generator().manual_seed(seed)
    th = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * math.pi
    th_dot = 2.0 * torch.rand(batch, generator=gen, dtype=torch.float64) - 1.0
    x_init = torch.stack((th.cos(), th.sin(), th_dot), dim=-1)
    weights = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=torch.float64)
    goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    C = torch.diag(2.0 * weights).expand(batch, T, 4, 4)
    c = (-2.0 * weights * goal).expand(batch, T, 4)
    return x_init.to(dtype), C.to(dtype).contiguous(), c.to(dtype).contiguous()


def quadratic_cost(x: Tensor, u: Tensor, C: Tensor, c: Tensor) -> Tensor:
    """Per-step cost 1/2 tau' C tau + c' tau; x (B, T, n), u (B, T, m) -> (B, T)."""
    tau = torch.cat((x, u), dim=-1)
    return 0.5 * torch.einsum("bti,btij,btj->bt", tau, C, tau) + (c * tau).sum(-1)


def affine_step(F: Tensor, f: Tensor) -> Callable[[int, Tensor, Tensor], Tensor]:
    """x_{t+1} = F_t [x_t; u_t] + f_t as a step function; F (B, T-1, n, n+m), f (B, T-1, n)."""

    def step(t: int, x: Tensor, u: Tensor) -> Tensor:
        tau = torch.cat((x, u), dim=-1)
        return torch.einsum("bij,bj->bi", F[:, t], tau) + f[:, t]

    return step


def kkt_residual(
    x_init: Tensor,
    u: Tensor,
    C: Tensor,
    c: Tensor,
    step: Callable[[int, Tensor, Tensor], Tensor],
    u_lower: Tensor,
    u_upper: Tensor,
) -> Tensor:
    """Projected-gradient residual of the reduced problem at ``u``, in float64.

    Args:
        x_init: (B, n) initial states.
        u: (B, T, m) controls to check.
        C: (B, T, n+m, n+m) quadratic cost terms.
        c: (B, T, n+m) linear cost terms.
        step: ``step(t, x_t (B, n), u_t (B, m)) -> x_{t+1} (B, n)`` in float64.
        u_lower: (B, T, m) lower bounds.
        u_upper: (B, T, m) upper bounds.

    Returns:
        (B,) max over t and controls of |u - clamp(u - dJ/du, u_lower, u_upper)|, divided by
        1 + max |dJ/du| so that it is relative to the problem's gradient scale; zero exactly
        at a KKT point.
    """
    f64 = torch.float64
    lower, upper = u_lower.detach().to(f64), u_upper.detach().to(f64)
    with torch.enable_grad():
        u = u.detach().to(f64).clamp(lower, upper).requires_grad_(True)
        states = [x_init.detach().to(f64)]
        for t in range(u.shape[1] - 1):
            states.append(step(t, states[-1], u[:, t]))
        x = torch.stack(states, dim=1)
        total = quadratic_cost(x, u, C.detach().to(f64), c.detach().to(f64)).sum()
        (grad,) = torch.autograd.grad(total, u)
    projected = u - torch.maximum(torch.minimum(u - grad, upper), lower)
    scale = 1.0 + grad.abs().amax(dim=(1, 2))
    return (projected.abs().amax(dim=(1, 2)) / scale).detach()
