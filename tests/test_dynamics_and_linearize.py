"""Dynamics Jacobians three ways (analytic, vectorized autograd, central differences),
the Lagrangian curvature against a loop, and AffineDynamics."""

from __future__ import annotations

import pytest
import torch

from mpc_policy import AffineDynamics
from mpc_policy.linearize import dynamics_curvature, dynamics_jacobian
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


def test_lagrangian_curvature_matches_a_loop() -> None:
    dynamics = PendulumDynamics()
    x, u = start_states(3, seed=3), torch.randn(3, 1, dtype=F64)
    lam = torch.randn(3, 3, dtype=F64)
    _, gradient, hessian = dynamics_curvature(dynamics, x, u, lam)
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
