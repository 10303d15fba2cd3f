"""Cost modules: values, exact derivatives against autograd, positivity, errors."""

from __future__ import annotations

import pytest
import torch

from mpc_policy import GoalWeightedCost, QuadraticCost
from mpc_policy.problem.linearize import cost_derivatives

F64 = torch.float64


def _trajectory(B: int = 3, T: int = 4, n: int = 3, m: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, n, generator=g, dtype=F64), torch.randn(
        B, T, m, generator=g, dtype=F64
    )


def _autograd_derivatives(cost, x, u):
    """Reference derivatives with a plain per-row loop (independent of linearize.py)."""
    tau = torch.cat([x, u], -1)
    n = x.shape[-1]
    B, T, d = tau.shape
    H = torch.zeros(B, T, d, d, dtype=F64)
    g = torch.zeros(B, T, d, dtype=F64)
    for b in range(B):
        for t in range(T):

            def step(z, b=b, t=t):
                full = tau.clone()
                full[b, t] = z
                return cost(full[..., :n], full[..., n:])[b, t]

            g[b, t] = torch.autograd.functional.jacobian(step, tau[b, t])
            H[b, t] = torch.autograd.functional.hessian(step, tau[b, t])
    return H, g


@pytest.mark.parametrize("kind", ["quadratic", "goal_weighted"])
def test_quadratize_matches_autograd(kind: str) -> None:
    x, u = _trajectory()
    if kind == "quadratic":
        A = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
        cost = QuadraticCost(A @ A.T, torch.randn(4, dtype=F64))
    else:
        cost = GoalWeightedCost(
            torch.tensor([1.0, 2.0, 0.1, 0.01], dtype=F64),
            torch.tensor([1.0, 0.0, 0.5, 0.0], dtype=F64),
            linear=torch.tensor([0.0, 0.1, 0.0, 0.2], dtype=F64),
        )
    H, g = cost.quadratize(x, u)
    H_ref, g_ref = _autograd_derivatives(cost, x, u)
    torch.testing.assert_close(H, H_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", ["shared", "per_step", "per_element"])
def test_quadratic_cost_value_with_an_unsymmetric_C(shape: str) -> None:
    """The value 1/2 tau' C tau + c' tau, from C as given (no symmetrization needed), for
    each layout of C and c; the derivatives are those of its symmetric part."""
    x, u = _trajectory()
    B, T, d = x.shape[0], x.shape[1], 4
    lead = {"shared": (), "per_step": (T,), "per_element": (B, T)}[shape]
    g = torch.Generator().manual_seed(2)
    C = torch.randn(*lead, d, d, generator=g, dtype=F64)
    c = torch.randn(*lead, d, generator=g, dtype=F64)
    cost = QuadraticCost(C, c)
    tau = torch.cat([x, u], -1)
    C_full, c_full = C.expand(B, T, d, d), c.expand(B, T, d)
    expected = 0.5 * torch.einsum("bti,btij,btj->bt", tau, C_full, tau)
    expected = expected + (c_full * tau).sum(-1)
    torch.testing.assert_close(cost(x, u), expected, atol=1e-12, rtol=0)
    H, gradient = cost.quadratize(x, u)
    H_ref, g_ref = _autograd_derivatives(cost, x, u)
    assert H.shape == (B, T, d, d) and gradient.shape == (B, T, d)
    torch.testing.assert_close(H, H_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(gradient, g_ref, atol=1e-12, rtol=0)


def test_vectorized_autograd_derivatives_match_the_loop() -> None:
    class Smooth(torch.nn.Module):
        def forward(self, x, u):
            tau = torch.cat([x, u], -1)
            return torch.log(torch.cosh(tau)).sum(-1) + (tau[..., 0] * tau[..., -1]) ** 2

    x, u = _trajectory()
    H, g = cost_derivatives(Smooth(), x.transpose(0, 1), u.transpose(0, 1))
    H_ref, g_ref = _autograd_derivatives(Smooth(), x, u)
    torch.testing.assert_close(H.transpose(0, 1), H_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g.transpose(0, 1), g_ref, atol=1e-12, rtol=0)


def test_goal_weighted_cost_value_and_positive_weights() -> None:
    weights = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=F64)
    goal = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    cost = GoalWeightedCost(weights, goal)
    torch.testing.assert_close(cost.weights, weights, atol=1e-12, rtol=1e-12)
    x = torch.tensor([[[0.0, 1.0, 2.0]]], dtype=F64)
    u = torch.tensor([[[3.0]]], dtype=F64)
    expected = 1.0 * 1.0 + 1.0 * 1.0 + 0.1 * 4.0 + 0.001 * 9.0
    torch.testing.assert_close(cost(x, u), torch.tensor([[expected]], dtype=F64))
    with torch.no_grad():
        cost.raw_weights.fill_(-50.0)
    assert bool((cost.weights > 0).all())


def test_cost_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="weights: expected all entries > 0"):
        GoalWeightedCost(torch.tensor([1.0, -1.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="weights and goal"):
        GoalWeightedCost(torch.ones(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"C: expected a \(\.\.\., n\+m, n\+m\)"):
        QuadraticCost(torch.ones(3, 2))
    cost = GoalWeightedCost(torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64))
    x, u = _trajectory(n=2)
    with pytest.raises(ValueError, match="n\\+m = 3"):
        cost(x, u)
