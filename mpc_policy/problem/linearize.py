"""Local models of a cost and a dynamics module around a trajectory (eqs. (12), (13)).

    cost:      C_t(tau) ~ 1/2 (tau - tau_t)' H_t (tau - tau_t) + g_t' (tau - tau_t) + ...
    dynamics:  f(tau)   ~ f(tau_t) + F_t (tau - tau_t)

plus the costate-weighted curvature of the dynamics, the Hessian of lambda' f(tau), that the
exact gradients of a nonlinear problem need (the Hessian of the Lagrangian).

Derivatives come from the module when it provides them (``cost.quadratize``,
``dynamics.jacobian``), else from reverse-mode autograd, or from central finite differences
evaluated in one batched call. The k reverse passes of a dynamics Jacobian are one pass
either way, with no Python loop over rows or batch elements: for few rows the model runs once
on k copies of its rows (copy i gives row i of every Jacobian), for many rows the passes are
vectorized with ``is_grads_batched`` (vmap inside autograd), which spares the copies'
arithmetic but costs more per call. The rows of a cost or a
dynamics model are independent (one step, one batch element each), so the gradient of their
sum holds every per-row gradient at once.

``create_graph=True`` keeps the graph from the results to the modules' parameters (the
parameter part of the implicit gradient needs it: without it the term through F is lost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mpc_policy.problem.contract import in_place_error

__all__ = ["cost_derivatives", "dynamics_curvature", "dynamics_jacobian"]


@contextmanager
def _autograd_on(module: object = None) -> Iterator[None]:
    """Autograd enabled even under ``no_grad`` or ``inference_mode`` (SB3 rollouts); an
    in-place update of ``module``'s that autograd cannot follow is an error naming it."""
    with torch.inference_mode(False), torch.enable_grad():
        try:
            yield
        except RuntimeError as error:
            name = getattr(module, "name", None) or type(module).__name__
            named = None if module is None else in_place_error(name, error)
            if named is not None:
                raise named from error
            raise


def _leaf(tau: Tensor, create_graph: bool = False) -> Tensor:
    """The point to differentiate at: a fresh leaf, or, when a graph is asked for and tau
    has one (the unrolled solve), tau itself, so that the derivatives keep their
    dependence on the trajectory (autograd through a Newton-type iteration then tends to
    the implicit derivative of its fixed point)."""
    if create_graph and tau.requires_grad:
        return tau
    return tau.detach().clone().requires_grad_(True)


# A dynamics Jacobian of k outputs on N rows runs the model on k copies of its rows while
# k N is at most this (one forward and one reverse pass on k N rows: 10-30 % faster than the
# vectorized reverse pass for the pendulum at B = 1 to 32, slower beyond about 5000 rows).
_COPIED_ROWS = 4096


def _copies(tau: Tensor, k: int, row_copies: bool) -> tuple[Tensor, bool]:
    """tau (..., d) as k copies (k, ..., d) in front when ``row_copies`` allows it and the k
    copied rows are few enough, else tau itself; and whether it was copied. Row r of a copy
    is still batch element r mod B."""
    copies = row_copies and k * tau[..., 0].numel() <= _COPIED_ROWS
    return (tau.expand(k, *tau.shape) if copies else tau), copies


def _basis(size: int, like: Tensor) -> Tensor:
    """(size, *like.shape) with e_i in the last dimension of every row."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    shape = (size,) + (1,) * (like.dim() - 1) + (size,)
    return eye.view(shape).expand(size, *like.shape[:-1], size)


def _rows_jacobian(
    out: Tensor,
    tau: Tensor,
    create_graph: bool,
    retain_graph: bool | None = None,
    copies: bool = False,
) -> Tensor:
    """Per-row Jacobian (..., k, d) of out (..., k) with respect to tau (..., d).

    With ``copies``, out (k, ..., k) and tau (k, ..., d) are k copies of one computation,
    and copy i gives row i of the Jacobian in a single reverse pass.
    """
    k = out.shape[-1]
    if not out.requires_grad:
        raise ValueError(
            "the function does not depend differentiably on its input; use "
            'jacobian="finite_diff" (and grad_method="paper") for non-differentiable models'
        )
    (rows,) = torch.autograd.grad(
        out,
        tau,
        grad_outputs=_basis(k, out[0]) if copies else _basis(k, out),
        is_grads_batched=not copies,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    lead = tau.shape[1:-1] if copies else tau.shape[:-1]
    if rows is None:
        return torch.zeros(*lead, k, tau.shape[-1], dtype=tau.dtype, device=tau.device)
    return rows.movedim(0, -2)


def cost_derivatives(
    cost: Callable[[Tensor, Tensor], Tensor], x: Tensor, u: Tensor, *, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """Per-step Hessian and gradient of a cost, time-major.

    Args:
        cost: module with cost(x (B, T, n), u (B, T, m)) -> (B, T).
        x: (T, B, n) states.
        u: (T, B, m) controls.
        create_graph: keep the graph to the cost's parameters.

    Returns:
        hessian: (T, B, d, d) and gradient: (T, B, d), d = n + m.
    """
    n = x.shape[-1]
    quadratize = getattr(cost, "quadratize", None)
    if callable(quadratize):
        hessian, gradient = quadratize(x.transpose(0, 1), u.transpose(0, 1))
        return hessian.transpose(0, 1), gradient.transpose(0, 1)
    with _autograd_on(cost):
        tau = _leaf(torch.cat([x, u], dim=-1), create_graph)
        value = cost(tau[..., :n].transpose(0, 1), tau[..., n:].transpose(0, 1)).sum()
        (gradient,) = torch.autograd.grad(value, tau, create_graph=True)
        hessian = _rows_jacobian(gradient, tau, create_graph)
    if not create_graph:
        gradient, hessian = gradient.detach(), hessian.detach()
    return 0.5 * (hessian + hessian.transpose(-1, -2)), gradient


def dynamics_jacobian(
    dynamics: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    u: Tensor,
    *,
    method: str = "autograd",
    eps: float = 1e-6,
    create_graph: bool = False,
    row_copies: bool = False,
) -> Tensor:
    """Jacobian F = d f / d [x; u] of a dynamics model on every row.

    Args:
        dynamics: module with dynamics(x (..., n), u (..., m)) -> (..., k) (k = n for
            dynamics; any k, e.g. constraint rows, without ``row_copies``).
        x: (..., n) states.
        u: (..., m) controls.
        method: "autograd", "analytic" (``dynamics.jacobian``) or "finite_diff".
        eps: relative step of the central differences.
        create_graph: keep the graph to the model's parameters.
        row_copies: the model takes any leading shape and gives k = n values per row
            (``contract.CheckedDynamics``): on few rows, autograd runs it on n copies of
            them in front, one reverse pass for all of F.

    Returns:
        F: (..., n, n+m).
    """
    n = x.shape[-1]
    if method == "analytic":
        jacobian = getattr(dynamics, "jacobian", None)
        if not callable(jacobian):
            raise TypeError(
                'jacobian="analytic" needs a dynamics module with a jacobian(x, u) method; '
                f"{getattr(dynamics, 'name', type(dynamics).__name__)} has none "
                '(use jacobian="autograd")'
            )
        F = jacobian(x, u)
        return F if create_graph else F.detach()
    if method == "finite_diff":
        tau = torch.cat([x, u], dim=-1)
        d = tau.shape[-1]
        h = eps * (1.0 + tau.abs())  # (..., d)
        step = _basis(d, tau) * h.unsqueeze(0)
        both = torch.cat([tau.unsqueeze(0) + step, tau.unsqueeze(0) - step])  # (2d, ..., d)
        out = dynamics(both[..., :n], both[..., n:])
        diff = (out[:d] - out[d:]) / (2.0 * h.movedim(-1, 0).unsqueeze(-1))  # (d, ..., n)
        F = diff.movedim(0, -1)
        return F if create_graph else F.detach()
    with _autograd_on(dynamics):
        tau, copies = _copies(_leaf(torch.cat([x, u], dim=-1), create_graph), n, row_copies)
        out = dynamics(tau[..., :n], tau[..., n:])
        F = _rows_jacobian(out, tau, create_graph, copies=copies)
    return F if create_graph else F.detach()


def dynamics_curvature(
    dynamics: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    u: Tensor,
    lam: Tensor,
    *,
    create_graph: bool = False,
    row_copies: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Costate-weighted derivatives of the dynamics: the dynamics part of the Lagrangian.

    Args:
        dynamics: module with dynamics(x (..., n), u (..., m)) -> (..., n).
        x: (..., n) states.
        u: (..., m) controls.
        lam: (..., n) costates of the next states (held constant).
        create_graph: keep the graph from the gradient and the next state to the model's
            parameters (the Hessian is always returned without graph).
        row_copies: the model takes any leading shape (``contract.CheckedDynamics``): on
            few rows, autograd runs it on d copies of them, one second reverse pass for
            all of the Hessian.

    Returns:
        next_state: (..., n) f(x, u);
        gradient: (..., d) F' lam, the gradient of lam' f;
        hessian: (..., d, d) sum_i lam_i d2 f_i / d tau2.
    """
    n = x.shape[-1]
    with _autograd_on(dynamics):
        tau = _leaf(torch.cat([x, u], dim=-1))
        # copy i of the rows gives row i of the Hessian
        points, copies = _copies(tau, tau.shape[-1], row_copies)
        out = dynamics(points[..., :n], points[..., n:])
        # costates from an inference-mode solve are copied out of it to enter the graph
        weights = lam.detach().clone() if lam.is_inference() else lam.detach()
        weighted = (out * weights).sum()
        (gradient,) = torch.autograd.grad(weighted, points, create_graph=True)
        hessian = (
            _rows_jacobian(gradient, points, False, retain_graph=create_graph, copies=copies)
            if gradient.requires_grad
            else None
        )
    if copies:
        out, gradient = out[0], gradient[0]
    if hessian is None:  # affine dynamics: no curvature
        hessian = torch.zeros(*tau.shape, tau.shape[-1], dtype=tau.dtype, device=tau.device)
    if not create_graph:
        out, gradient = out.detach(), gradient.detach()
    return out, gradient, 0.5 * (hessian + hessian.transpose(-1, -2))
