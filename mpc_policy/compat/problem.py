"""The translation: an mpc.pytorch call as a call of ``mpc_policy``'s public API.

mpc.pytorch stores every per-step term time first, ``[T, B, ...]``, and lets a term drop its
batch dimension (``[T, ...]``) or both leading dimensions (``[...]``); the native API is
batch first, ``(B, T, ...)`` (DESIGN.md). Its problem

    min  sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t  (or a cost module),   tau_t = [x_t; u_t]
    s.t. x_{t+1} = F_t tau_t + f_t  (or a dynamics module),  u_lower <= u_t <= u_upper,
         u_t = 0 where u_zero_I

is solved as (``solve``):

    QuadCost + LinDx   ->  ``lqr_solve`` (``lqr_trust_region`` with delta_u)
    anything else      ->  ``MPC`` on a cost and a dynamics module (``mpc_trust_region``)

after the terms are made batch first (views, so gradients flow back), ``u_zero_I`` is folded
into the bounds, ``slew_rate_penalty`` becomes ``mpc_policy.slew_rate``'s augmented problem
and upstream's settings become ``MPCOptions`` fields (``native_options``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mpc_policy.compat.terms import GradMethods, LinDx, QuadCost
from mpc_policy.costs import QuadraticCost
from mpc_policy.dynamics import AffineDynamics
from mpc_policy.lqr import lqr_solve
from mpc_policy.mpc import MPC
from mpc_policy.options import MPCOptions
from mpc_policy.slew_rate import SlewRateCost, SlewRateDynamics, slew_rate_lqr
from mpc_policy.solution import Solution
from mpc_policy.trust_region import lqr_trust_region, mpc_trust_region

__all__ = [
    "GradInputDynamics",
    "RowCost",
    "batch_first",
    "contiguous_grad",
    "control_bound",
    "dynamics_step",
    "dynamics_terms",
    "jacobian_method",
    "native_dynamics",
    "native_options",
    "quadratic_terms",
    "received",
    "solve",
    "zero_mask",
]

JACOBIAN = {
    GradMethods.AUTO_DIFF: "autograd",
    GradMethods.FINITE_DIFF: "finite_diff",
    GradMethods.ANALYTIC: "analytic",
}
# the options of a box-LQR solve (its gradient is exact, whatever the rule or Jacobian)
LQR_OPTIONS = ("max_iter", "tol", "line_search_decay", "max_line_search", "on_unconverged")
_RENAMED = (
    "mpc_policy.compat passes lqr_iter as max_iter, eps as tol, linesearch_decay as "
    "line_search_decay, max_linesearch_iter as max_line_search and diff_rule as grad_method"
)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands the gradient on contiguous (mpc.pytorch's layout)."""

    @staticmethod
    def forward(ctx: Any, value: Tensor) -> Tensor:
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def contiguous_grad(value: Any) -> Any:
    """A user's tensor whose gradient will arrive contiguous; anything else unchanged.

    The solver works on batch-first views (transposes, expands) of the time-major terms,
    so the raw gradient of a term is a transposed view; ``grad.view(-1)`` on it fails
    where it works with mpc.pytorch.
    """
    if isinstance(value, Tensor) and value.requires_grad:
        return _ContiguousGrad.apply(value)
    return value


def received(value: object) -> str:
    """How an error message names what it received: a tensor's shape, else its type."""
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _shape(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def batch_first(name: str, value: Tensor, steps: int, batch: int, tail: Sequence[int]) -> Tensor:
    """A time-major term as a batch-first view (B, steps, *tail).

    Args:
        name: argument name for messages.
        value: [steps, B, *tail], [steps, 1, *tail], [steps, *tail] or [*tail].
        steps: number of time steps the term has.
        batch: the batch size B.
        tail: the per-step shape.

    Returns:
        (B, steps, *tail) view of ``value``.
    """
    tail = tuple(tail)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(value).__name__}")
    shape = tuple(value.shape)
    if shape == tail:
        return value.expand(batch, steps, *tail)
    if shape == (steps, *tail):
        return value.unsqueeze(0).expand(batch, steps, *tail)
    if len(shape) == len(tail) + 2 and shape[0] == steps and shape[2:] == tail:
        if shape[1] in (batch, 1):
            return value.transpose(0, 1).expand(batch, steps, *tail)
    raise ValueError(
        f"{name}: expected shape {_shape(('T', 'B', *tail))} = {_shape((steps, batch, *tail))} "
        f"(time-major), {_shape((steps, *tail))} or {_shape(tail)}, received {_shape(shape)}"
    )


def quadratic_terms(
    C: Tensor, c: Tensor | None, horizon: int, batch: int, n_tau: int
) -> tuple[Tensor, Tensor]:
    """The cost terms of a ``QuadCost``, batch first.

    Args:
        C: [T, B, n+m, n+m], [T, n+m, n+m] or [n+m, n+m] quadratic terms.
        c: [T, B, n+m], [T, n+m], [n+m] linear terms, or None (zero).
        horizon: T.
        batch: B.
        n_tau: n + m.

    Returns:
        C (B, T, n+m, n+m) and c (B, T, n+m).
    """
    C = batch_first("QuadCost.C", C, horizon, batch, (n_tau, n_tau))
    if c is None or c.numel() == 0:
        c = torch.zeros(n_tau, dtype=C.dtype, device=C.device)
    return C, batch_first("QuadCost.c", c, horizon, batch, (n_tau,))


def dynamics_terms(
    F: Tensor | None, f: Tensor | None, horizon: int, batch: int, n_state: int, n_tau: int
) -> tuple[Tensor, Tensor]:
    """The dynamics terms of a ``LinDx``, batch first, for the T-1 transitions.

    mpc.pytorch reads F[t] and f[t] for t < T-1 only, so a term with T steps (as in its
    README) has its last step dropped.

    Args:
        F: [T-1 or T, B, n, n+m], [T-1 or T, n, n+m] or [n, n+m] dynamics matrices.
        f: [T-1 or T, B, n], [T-1 or T, n], [n], None or an empty tensor (zero).
        horizon: T.
        batch: B.
        n_state: n.
        n_tau: n + m.

    Returns:
        F (B, T-1, n, n+m) and f (B, T-1, n).
    """
    steps = horizon - 1
    if F is None:
        raise ValueError("LinDx.F: expected a tensor, received None")

    def leading(name: str, value: Tensor, tail: tuple[int, ...]) -> Tensor:
        if value.dim() > len(tail) and value.shape[0] == horizon and horizon > steps:
            value = value[:steps]
        return batch_first(name, value, steps, batch, tail)

    F = leading("LinDx.F", F, (n_state, n_tau))
    if f is None or f.numel() == 0:
        f = torch.zeros(n_state, dtype=F.dtype, device=F.device)
    return F, leading("LinDx.f", f, (n_state,))


def time_invariant_dynamics(F: Tensor, f: Tensor) -> AffineDynamics:
    """A ``LinDx`` as a dynamics module, for a cost module (a module sees no time index).

    Args:
        F: (B, T-1, n, n+m) dynamics matrices, the same at every step.
        f: (B, T-1, n) offsets, the same at every step.
    """
    if F.shape[1] == 0:  # T = 1: no transition
        return AffineDynamics(F.new_zeros(F.shape[0], *F.shape[2:]))
    if not (torch.equal(F, F[:, :1].expand_as(F)) and torch.equal(f, f[:, :1].expand_as(f))):
        raise ValueError(
            "dx: a time-varying LinDx with a cost module is not supported (a dynamics module "
            "sees no time index); pass a QuadCost, or a LinDx whose F and f are the same at "
            "every step"
        )
    return AffineDynamics(F[:, 0], f[:, 0])


def dynamics_step(
    dynamics: LinDx | nn.Module, horizon: int, batch: int, n_state: int, n_tau: int
) -> Callable[[Tensor, Tensor, int], Tensor]:
    """x_{t+1} = step(x_t [B, n], u_t [B, m], t) of a ``LinDx`` (no graph) or a module.

    Args:
        dynamics: a ``LinDx`` in any of mpc.pytorch's forms, or a module dx(x, u).
        horizon, batch, n_state, n_tau: T, B, n and n + m.
    """
    if not isinstance(dynamics, LinDx):
        if not callable(dynamics):
            raise TypeError(
                f"dynamics: expected a LinDx or an nn.Module, received {type(dynamics)}"
            )
        return lambda x, u, t: dynamics(x, u)
    F_term, f_term = (None if z is None else z.detach() for z in dynamics)
    F, f = dynamics_terms(F_term, f_term, horizon, batch, n_state, n_tau)
    return lambda x, u, t: (F[:, t] @ torch.cat([x, u], dim=-1).unsqueeze(-1)).squeeze(-1) + f[:, t]


def control_bound(
    name: str,
    value: float | Tensor | None,
    zero: Tensor | None,
    horizon: int,
    batch: int,
    n_ctrl: int,
    like: Tensor,
) -> float | Tensor | None:
    """A control bound in a form ``mpc_policy`` takes, with ``u_zero_I`` folded in.

    Args:
        name: "u_lower" or "u_upper".
        value: a float, or [T, B, m] (also [T, m] or [m]); None = unbounded on this side.
        zero: [T, B, m] boolean mask of the controls fixed to 0 (``u_zero_I``), or None.
        horizon, batch, n_ctrl: T, B, m.
        like: a tensor with the problem's dtype and device.

    Returns:
        The float itself, a (B, T, m) tensor, or None.
    """
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.expand(n_ctrl)
    if isinstance(value, Tensor) and value.dim() == 2 and horizon == batch > 1:
        # as mpc_policy's own API: [T, m] (per step) and [B, m] (per element) look alike
        raise ValueError(
            f"{name}: shape {_shape(tuple(value.shape))} is ambiguous with B = T = {batch}: "
            f"[T, m], one bound per time step, or [B, m], one per batch element; pass "
            f"[T, 1, m] = [{horizon}, 1, {n_ctrl}] for per-time-step bounds or [T, B, m] "
            f"(e.g. bound.expand({horizon}, {batch}, {n_ctrl})) for per-element ones"
        )
    if isinstance(value, Tensor):
        value = batch_first(name, value, horizon, batch, (n_ctrl,))
    elif value is not None and not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, a tensor or None, received {type(value)}")
    if zero is None:
        return float(value) if isinstance(value, (int, float)) else value
    if value is None:
        value = float("-inf") if name == "u_lower" else float("inf")
    bound = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    bound = bound.expand(batch, horizon, n_ctrl)
    return torch.where(zero, torch.zeros_like(bound), bound)


def zero_mask(u_zero_I: Tensor | None, horizon: int, batch: int, n_ctrl: int) -> Tensor | None:
    """``u_zero_I`` [T, B, m] (nonzero = fixed to 0) as a (B, T, m) boolean mask, or None."""
    if u_zero_I is None:
        return None
    mask = batch_first("u_zero_I", u_zero_I, horizon, batch, (n_ctrl,))
    return mask.bool()


def initial_controls(
    u_init: Tensor | None, horizon: int, batch: int, n_ctrl: int, like: Tensor
) -> Tensor | None:
    """The warm start [T, B, m] or [T, m] as a detached (B, T, m) tensor, or None."""
    if u_init is None:
        return None
    u = batch_first("u_init", u_init, horizon, batch, (n_ctrl,))
    return u.detach().to(dtype=like.dtype, device=like.device)


def previous_controls(prev_ctrl: Tensor | None, batch: int, n_ctrl: int, like: Tensor) -> Tensor:
    """The control before u_1 for the slew-rate penalty, (B, m); zeros when None.

    Args:
        prev_ctrl: [m], [B, m] or [1, B, m] (mpc.pytorch's forms), or None.
    """
    if prev_ctrl is None:
        return torch.zeros(batch, n_ctrl, dtype=like.dtype, device=like.device)
    if not isinstance(prev_ctrl, Tensor):
        raise TypeError(f"prev_ctrl: expected a torch.Tensor, received {type(prev_ctrl)}")
    value = prev_ctrl[0] if prev_ctrl.dim() == 3 and prev_ctrl.shape[0] == 1 else prev_ctrl
    if tuple(value.shape) in ((n_ctrl,), (1, n_ctrl), (batch, n_ctrl)):
        return value.to(like.dtype).expand(batch, n_ctrl)
    raise ValueError(
        f"prev_ctrl: expected shape (m,) = ({n_ctrl},), (B, m) = ({batch}, {n_ctrl}) or "
        f"(1, B, m), received {_shape(tuple(prev_ctrl.shape))}"
    )


def jacobian_method(grad_method: GradMethods) -> str:
    """The native ``jacobian`` option of a ``GradMethods`` member."""
    if grad_method not in JACOBIAN:
        raise ValueError(
            f"grad_method: expected GradMethods.AUTO_DIFF, FINITE_DIFF or ANALYTIC, "
            f"received {grad_method!r} (to check an analytic Jacobian, compare "
            "linearize_dynamics under ANALYTIC and AUTO_DIFF)"
        )
    return JACOBIAN[grad_method]


def native_options(mpc: Any) -> dict[str, Any]:
    """The ``MPCOptions`` fields of a compat ``MPC``'s arguments (checked by ``MPCOptions``)."""
    for name, valid, expected in (
        ("back_eps", lambda v: isinstance(v, float | int) and v > 0, "a positive float"),
        ("best_cost_eps", lambda v: isinstance(v, float | int) and v > 0, "a positive float"),
        ("not_improved_lim", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        ("slew_rate_penalty", lambda v: v is None or float(v) >= 0, "a float >= 0 or None"),
        ("delta_u", lambda v: v is None or float(v) > 0, "a positive float or None"),
    ):
        value = getattr(mpc, name)
        if not valid(value):
            raise ValueError(f"{name}: expected {expected}, received {value!r}")
    options: dict[str, Any] = {
        "max_iter": mpc.lqr_iter,
        "tol": mpc.eps,
        "line_search_decay": mpc.linesearch_decay,
        "max_line_search": mpc.max_linesearch_iter,
        "grad_method": mpc.diff_rule,
        "jacobian": jacobian_method(mpc.grad_method),
        "on_unconverged": "ignore",
    }
    try:
        MPCOptions.from_kwargs(**options)
    except ValueError as error:
        raise ValueError(f"{error} ({_RENAMED})") from error
    return options


class GradInputDynamics(nn.Module):
    """An mpc.pytorch dynamics module whose ``grad_input(x, u) -> (R, S)`` (R = dx'/dx
    (N, n, n), S = dx'/du (N, n, m)) serves as the native ``jacobian(x, u) -> (N, n, n+m)``.

    mpc.pytorch asks for it right after calling the module on the same rows (its
    ``NNDynamics`` caches activations in the call): so does this.
    """

    def __init__(self, dx: nn.Module) -> None:
        super().__init__()
        self.dx = dx

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Next states (N, n) for rows x (N, n), u (N, m)."""
        return self.dx(x, u)

    def jacobian(self, x: Tensor, u: Tensor) -> Tensor:
        """Jacobians (N, n, n+m) at rows x (N, n), u (N, m)."""
        self.dx(x, u)
        R, S = self.dx.grad_input(x, u)  # type: ignore[operator]
        N, n, m = *x.shape, u.shape[-1]
        return torch.cat([R.expand(N, n, n), S.expand(N, n, m)], dim=-1)


def native_dynamics(dx: nn.Module, jacobian: str) -> nn.Module:
    """A dynamics module for ``MPC``: with ``grad_input`` as its ``jacobian``, if it has one."""
    if callable(getattr(dx, "grad_input", None)):
        return GradInputDynamics(dx)
    if jacobian == "analytic" and not callable(getattr(dx, "jacobian", None)):
        raise TypeError(
            f"dx: GradMethods.ANALYTIC (the default) needs a grad_input(x, u) method; "
            f"{type(dx).__name__} has none (pass grad_method=GradMethods.AUTO_DIFF or "
            "GradMethods.FINITE_DIFF)"
        )
    return dx


class RowCost(nn.Module):
    """A row-wise cost ``cost(tau (N, n+m)) -> (N,)`` as cost(x (B, T, n), u (B, T, m)) -> (B, T).

    mpc.pytorch calls it once per time step on (B, n+m); here it is called once on all B*T
    rows, the same for a cost that treats rows independently (as it must: the same module
    serves every step).
    """

    def __init__(self, cost: nn.Module) -> None:
        super().__init__()
        self.cost = cost

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        """Per-step cost (B, T) for x (B, T, n), u (B, T, m)."""
        tau = torch.cat([x, u], dim=-1)
        out = self.cost(tau.reshape(-1, tau.shape[-1]))
        if not isinstance(out, Tensor) or out.numel() != tau.shape[:-1].numel():
            raise ValueError(
                f"cost: expected cost(tau) to return one value per row, shape (N,) = "
                f"({tau.shape[:-1].numel()},), received {received(out)}"
            )
        return out.reshape(tau.shape[:-1])


def solve(x_init: Tensor, cost: QuadCost | nn.Module, dx: LinDx | nn.Module, mpc: Any) -> Solution:
    """Solve an mpc.pytorch call on the native API (the module docstring's table).

    Args:
        x_init: [B, n] initial states.
        cost: a ``QuadCost`` or a row-wise cost module cost(tau [N, n+m]) -> [N].
        dx: a ``LinDx`` or a row-wise dynamics module dx(x [N, n], u [N, m]) -> [N, n].
        mpc: the compat ``MPC``: its arguments (n_state, n_ctrl, T, the bounds, u_zero_I,
            u_init, slew_rate_penalty, prev_ctrl, delta_u and the ``native_options``).

    Returns:
        The native ``Solution``: x (B, T, n') (n' = m + n with the slew-rate penalty, the
        previous control first), u (B, T, m), cost (B,) and info; every tensor input's
        gradient arrives contiguous (``contiguous_grad``).
    """
    n, m, T, delta_u = mpc.n_state, mpc.n_ctrl, mpc.T, mpc.delta_u
    options, x_init, batch = native_options(mpc), contiguous_grad(x_init), x_init.shape[0]
    if not isinstance(cost, QuadCost | nn.Module):
        raise TypeError(f"cost: expected a QuadCost or an nn.Module, received {type(cost)}")
    if not isinstance(dx, LinDx | nn.Module):
        raise TypeError(f"dx: expected a LinDx or an nn.Module, received {type(dx)}")
    zero = zero_mask(mpc.u_zero_I, T, batch, m)
    lower = control_bound("u_lower", contiguous_grad(mpc.u_lower), zero, T, batch, m, x_init)
    upper = control_bound("u_upper", contiguous_grad(mpc.u_upper), zero, T, batch, m, x_init)
    u_init = initial_controls(mpc.u_init, T, batch, m, x_init)
    gamma = mpc.slew_rate_penalty
    if gamma is not None:
        prev = previous_controls(contiguous_grad(mpc.prev_ctrl), batch, m, x_init)
        x_init = torch.cat([prev, x_init], dim=-1)
    cost_module: nn.Module
    if isinstance(cost, QuadCost):
        if cost.C is None:
            raise ValueError("QuadCost.C: expected a tensor, received None")
        C, c = quadratic_terms(contiguous_grad(cost.C), contiguous_grad(cost.c), T, batch, n + m)
        if isinstance(dx, LinDx):
            F, f = dynamics_terms(contiguous_grad(dx.F), contiguous_grad(dx.f), T, batch, n, n + m)
            terms = (C, c, F, f) if gamma is None else slew_rate_lqr(C, c, F, f, gamma)
            lqr = {k: options[k] for k in LQR_OPTIONS}
            if delta_u is None:
                return lqr_solve(x_init, *terms, lower, upper, **lqr)
            return lqr_trust_region(x_init, *terms, lower, upper, float(delta_u), u_init, **lqr)
        cost_module = QuadraticCost(C, c)
    else:
        cost_module = RowCost(cost)
    dynamics: nn.Module
    if isinstance(dx, LinDx):
        F, f = dynamics_terms(contiguous_grad(dx.F), contiguous_grad(dx.f), T, batch, n, n + m)
        dynamics = time_invariant_dynamics(F, f)
    else:
        dynamics = native_dynamics(dx, options["jacobian"])
    if gamma is not None:
        cost_module, dynamics = SlewRateCost(cost_module, gamma, m), SlewRateDynamics(dynamics, m)
    controller = MPC(x_init.shape[1], m, T, lower, upper, **options)
    if delta_u is None:
        return controller(x_init, cost_module, dynamics, u_init)
    return mpc_trust_region(controller, x_init, cost_module, dynamics, float(delta_u), u_init)
