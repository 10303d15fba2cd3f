"""Dynamics Jacobians three ways (analytic, vectorized autograd, central differences),
the Lagrangian curvature against a loop, and AffineDynamics."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mpc_policy import AffineDynamics
from mpc_policy.problem import linearize
from mpc_policy.problem.linearize import dynamics_curvature, dynamics_jacobian
from tests.pendulum_model import PendulumDynamics, start_states

F64 = torch.float64


@pytest.mark.parametrize("method", ["autograd", "finite_diff"])
def test_jacobian_methods_match_analytic(method: str) -> None:
    dynamics = PendulumDynamics()
    x = start_states(6, seed=0).view(2, 3, 3)
    u = torch.randn(2, 3, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    reference = dynamics.jacobian(x, u)
    F = dynamics_jacobian(dynamics, x, u, method=method)
    assert F.shape == (2, 3, 3, 4)
    tolerance = 1e-12 if method == "autograd" else 1e-8
    torch.testing.assert_close(F, reference.detach(), atol=tolerance, rtol=0)


def test_jacobian_keeps_graph_to_parameters_when_asked() -> None:
    dynamics = PendulumDynamics()
    x, u = start_states(4, seed=2), torch.ones(4, 1, dtype=F64)
    F = dynamics_jacobian(dynamics, x, u, create_graph=True)
    (grad_g,) = torch.autograd.grad(F.sum(), dynamics.g)
    (expected,) = torch.autograd.grad(dynamics.jacobian(x, u).sum(), dynamics.g)
    torch.testing.assert_close(grad_g, expected, atol=1e-12, rtol=0)
    assert not dynamics_jacobian(dynamics, x, u).requires_grad


class PerElementGain(nn.Module):
    """x' = tanh(a_b * x) + u with a parameter per batch element (rows read as (-1, B, n))."""

    def __init__(self, gains: Tensor) -> None:
        super().__init__()
        self.gains = nn.Parameter(gains)

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        B, n = self.gains.shape[0], x.shape[-1]
        rows = torch.tanh(self.gains.view(1, B, 1) * x.reshape(-1, B, n))
        return rows.reshape(x.shape) + u.expand_as(x)


@pytest.mark.parametrize("create_graph", [False, True])
def test_jacobian_from_copied_rows_equals_the_vectorized_one(
    create_graph: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few rows run the model on n copies of them (one reverse pass), many rows vectorize
    the reverse passes: the same Jacobians, element by element, and the same gradient to
    per-element parameters (a copy keeps row r on batch element r mod B)."""
    g = torch.Generator().manual_seed(4)
    T, B, n = 3, 5, 2
    x = torch.randn(T, B, n, generator=g, dtype=F64)
    u = torch.randn(T, B, 1, generator=g, dtype=F64)
    dynamics = PerElementGain(torch.linspace(0.5, 2.0, B, dtype=F64))
    results = {}
    for rows_limit in (10**9, 0):  # copies, then the vectorized reverse pass
        monkeypatch.setattr(linearize, "_COPIED_ROWS", rows_limit)
        F = dynamics_jacobian(dynamics, x, u, create_graph=create_graph, row_copies=True)
        grad = torch.autograd.grad(F.sum(), dynamics.gains)[0] if create_graph else None
        results[rows_limit] = (F, grad)
    (F_copies, grad_copies), (F_vmap, grad_vmap) = results[10**9], results[0]
    assert torch.equal(F_copies, F_vmap)
    if create_graph:
        torch.testing.assert_close(grad_copies, grad_vmap, atol=1e-14, rtol=0)
    reference = dynamics_jacobian(dynamics, x, u, method="finite_diff")
    torch.testing.assert_close(F_copies.detach(), reference, atol=1e-8, rtol=0)


@pytest.mark.parametrize("row_copies", [False, True])
def test_lagrangian_curvature_matches_a_loop(row_copies: bool) -> None:
    dynamics = PendulumDynamics()
    x, u = start_states(3, seed=3), torch.randn(3, 1, dtype=F64)
    lam = torch.randn(3, 3, dtype=F64)
    next_state, gradient, hessian = dynamics_curvature(dynamics, x, u, lam, row_copies=row_copies)
    torch.testing.assert_close(next_state, dynamics(x, u).detach(), atol=1e-14, rtol=0)
    for b in range(3):
        tau = torch.cat([x[b], u[b]])

        def weighted(z, b=b):
            return (dynamics(z[:3], z[3:]) * lam[b]).sum()

        torch.testing.assert_close(
            gradient[b], torch.autograd.functional.jacobian(weighted, tau), atol=1e-12, rtol=0
        )
        torch.testing.assert_close(
            hessian[b], torch.autograd.functional.hessian(weighted, tau), atol=1e-12, rtol=0
        )


def test_affine_dynamics_batched_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    F = torch.randn(4, 2, 3, generator=g, dtype=F64)
    f = torch.randn(4, 2, generator=g, dtype=F64)
    dynamics = AffineDynamics(F, f)
    x = torch.randn(5, 4, 2, generator=g, dtype=F64)  # (..., B, n): batch right before features
    u = torch.randn(5, 4, 1, generator=g, dtype=F64)
    expected = torch.einsum("bij,sbj->sbi", F, torch.cat([x, u], -1)) + f
    torch.testing.assert_close(dynamics(x, u), expected)
    torch.testing.assert_close(dynamics_jacobian(dynamics, x, u), F.expand(5, 4, 2, 3))
    with pytest.raises(ValueError, match=r"F: expected shape \(n, n\+m\)"):
        AffineDynamics(torch.ones(3, 3))
