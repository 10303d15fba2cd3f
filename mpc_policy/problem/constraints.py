"""Inequality constraints beside the control box: the module contract and the per-element report.

A constraint module is called like a cost, on whole trajectories, and gives any number p of
rows per step, feasible where they are not positive:

    constraints(x (B, T, n), u (B, T, m)) -> g (B, T, p),   g(x_t, u_t) <= 0

Row (b, t, i) must depend on x[b, t] and u[b, t] alone (one step of one batch element, as a
cost's rows do), so that its derivatives are taken for all rows at once. A module with
per-batch-element parameters provides ``select_batch(index)`` (``mpc_policy.problem.contract``).
The control box u_lower <= u <= u_upper stays exact (box-DDP keeps it); constraints that only
bound the controls belong there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mpc_policy.problem.contract import _call, _check_output, module_name
from mpc_policy.problem.linearize import dynamics_curvature, dynamics_jacobian
from mpc_policy.solution import ConstraintReport

__all__ = [
    "CheckedConstraints",
    "ConstraintReport",
    "check_time_local",
    "complementarity",
    "constraint_curvature",
    "constraint_jacobian",
]


class CheckedConstraints:
    """A constraint module with its returns checked (shape (B, T, p), the inputs' dtype).

    Args:
        module: the user's constraints, g(x (B, T, n), u (B, T, m)) -> (B, T, p).
        n_rows: p, the number of rows per step (found by ``probe`` when None).
    """

    def __init__(self, module: Callable[..., Any], n_rows: int | None = None) -> None:
        if not callable(module):
            raise TypeError(
                "constraints: expected a module called as constraints(x, u), "
                f"received {type(module).__name__}"
            )
        self.module, self.n_rows = module, n_rows
        self.name = f"constraints ({module_name(module)})"

    def probe(self, x: Tensor, u: Tensor) -> int:
        """p, from one call on x (B, T, n), u (B, T, m)."""
        out = _call(self.name, self.module, x, u)
        call = f"constraints(x {tuple(x.shape)}, u {tuple(u.shape)})"
        if not isinstance(out, Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != x.shape[:2]:
            shape = (x.shape[0], x.shape[1], "p")
            received = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: expected {call} to return shape {shape} (p rows per step, "
                f"feasible where <= 0), received {received}"
            )
        if out.shape[-1] < 1:
            raise ValueError(f"{self.name}: expected p >= 1 rows per step, received p = 0")
        self.n_rows = int(out.shape[-1])
        return self.n_rows

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """Constraint values (B, T, p) for x (B, T, n), u (B, T, m)."""
        if self.n_rows is None:
            self.probe(x, u)
        assert self.n_rows is not None
        out = _call(self.name, self.module, x, u)
        shape = (x.shape[0], x.shape[1], self.n_rows)
        if isinstance(out, Tensor) and out.shape == shape and out.dtype == x.dtype:
            return out
        call = f"constraints(x {tuple(x.shape)}, u {tuple(u.shape)})"
        return _check_output(self.name, out, shape, x.dtype, call, "")

    def time_major(self, x: Tensor, u: Tensor) -> Tensor:
        """Values (T, B, p) for time-major x (T, B, n), u (T, B, m)."""
        return self(x.transpose(0, 1), u.transpose(0, 1)).transpose(0, 1)


def constraint_jacobian(constraints: CheckedConstraints, x: Tensor, u: Tensor) -> Tensor:
    """Jacobians G_t = dg / d[x_t; u_t] (T, B, p, n+m) at time-major x (T, B, n), u (T, B, m)."""
    return dynamics_jacobian(constraints.time_major, x, u, method="autograd")


def check_time_local(constraints: CheckedConstraints, x: Tensor, u: Tensor) -> None:
    """Every row g[b, t, i] must read x[b, t] and u[b, t] alone; a ``ValueError`` otherwise.

    The solver takes all rows' derivatives in one pass (the gradient of their sum), which is
    their Jacobian only when the Jacobian is block diagonal in time. One batched reverse pass
    checks it: for each of 2 ceil(log2 T) sets S of time steps (those whose bit k is 1 or 0),
    the rows outside S, weighted at random, must give an exact zero gradient on the steps in
    S; any two distinct steps are told apart by one of the sets.

    Args:
        x: (T, B, n) time-major states, u: (T, B, m) controls: a point to check at (the
            solution: a point where x does not change along the horizon can hide a
            dependence, e.g. on x_t - x_{t-1}).
    """
    T, n = x.shape[0], x.shape[-1]
    if T < 2:
        return
    steps = torch.arange(T, device=x.device)
    sets = []
    for k in range((T - 1).bit_length()):
        bit = ((steps >> k) & 1).bool()
        sets += [bit, ~bit]
    inside = torch.stack(sets).to(x.dtype)  # (K, T)
    generator = torch.Generator(device=x.device).manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad():
        tau = torch.cat([x, u], dim=-1).detach().clone().requires_grad_(True)
        values = constraints.time_major(tau[..., :n], tau[..., n:])
        shape = (inside.shape[0], *values.shape)
        random = 1.0 + torch.rand(shape, generator=generator, dtype=x.dtype, device=x.device)
        weights = random * (1.0 - inside).view(-1, T, 1, 1)
        (grads,) = torch.autograd.grad(
            values, tau, grad_outputs=weights, is_grads_batched=True, allow_unused=True
        )
    if grads is None:
        return
    leak = (grads != 0) & (inside.view(-1, T, 1, 1) > 0)  # NaN counts: a path exists
    if bool(leak.any()):
        step = int(torch.nonzero(leak.any(dim=(0, 2, 3))).flatten()[0])
        raise ValueError(
            f"{constraints.name}: a row of step t reads x or u of another step (the rows of "
            f"other steps depend on step {step}); each row g[b, t, i] must depend on "
            "x[b, t] and u[b, t] alone (the solver differentiates all rows in one pass). "
            "Write a condition that links steps through an extra state in the dynamics "
            "(e.g. the previous control as a state), see docs/constraints.md"
        )


def constraint_curvature(
    constraints: CheckedConstraints, x: Tensor, u: Tensor, mu: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The constraints' part of the Lagrangian, mu' g, and its derivatives (time-major).

    Args:
        x: (T, B, n) states, u: (T, B, m) controls.
        mu: (T, B, p) multipliers (held constant).
        create_graph: keep the graph from the values and the gradient to the parameters.

    Returns:
        values g (T, B, p), gradient G' mu (T, B, n+m) and Hessian sum_i mu_i d2 g_i
        (T, B, n+m, n+m), the last without graph.
    """
    return dynamics_curvature(constraints.time_major, x, u, mu, create_graph=create_graph)


def complementarity(values: Tensor, multipliers: Tensor) -> Tensor:
    """(B,) max |min(-g, mu)| of values g (B, T, p) and multipliers mu (B, T, p): zero exactly
    at a feasible point whose multipliers vanish on every inactive row."""
    return torch.minimum(-values, multipliers).abs().amax(dim=(1, 2))
