"""User dynamics modules compiled by tracing (``mpc_policy.problem.trace``) against the torch path.

Three modules with no compiled twin: the README's pendulum, an MLP (2 x 64, tanh) and
elementwise math with indexing, stack and cat. Each is traced to generated numba code and
solved on the compiled path; the reference is the same module opting out of tracing
(``compiled_twin()`` returning None: ``box_ddp``). Solutions agree within the tolerance,
statuses and iterations are identical, float64 gradients agree to 1e-10 relative. Also: the
generated derivatives against autograd, the trace reused by a second module, parameters
read at every solve, and the fallbacks with their reasons.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mpc_policy import MPC, GoalWeightedCost, QuadraticCost
from mpc_policy.problem.linearize import dynamics_curvature
from mpc_policy.problem.trace import flat_parameters, trace
from mpc_policy.solve.backend import ENVIRONMENT_VARIABLE, compiled_available
from tests.compiled_models import model_calls

pytestmark = pytest.mark.skipif(not compiled_available(), reason="needs numba")

T = 20


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)


class Pendulum(nn.Module):  # the README's example, as written there
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x, u, dt=0.05):
        theta = torch.atan2(x[..., 1], x[..., 0])
        w = x[..., 2] + (1.5 * self.g * x[..., 1] + 3.0 * u[..., 0]) * dt
        return torch.stack([torch.cos(theta + w * dt), torch.sin(theta + w * dt), w], -1)


class MLPDynamics(nn.Module):
    """x' = x + dt net([x; u]), two hidden layers of 64 with tanh."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        self.dt = 0.1

    def forward(self, x, u):
        return x + self.dt * self.net(torch.cat([x, u], -1))


class Elementwise(nn.Module):
    """A damped cart with a pendulum-like term: slices, select, stack, cat, where, clamp,
    pow, sqrt, exp, relu, division."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor([0.5, 1.2]))
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x, u):
        position, velocity = x[..., :1], x[..., 1:2]
        angle = x[..., 2]
        force = u[..., 0].clamp(-3.0, 3.0)
        drag = torch.where(velocity[..., 0] > 0, 0.1, 0.2) * velocity[..., 0] ** 2
        spring = self.k[0] * torch.sin(angle) / torch.sqrt(1.0 + position[..., 0] ** 2)
        acc = force / self.scale - drag - spring - torch.relu(position[..., 0] - 1.0)
        turn = -self.k[1] * angle + 0.1 * torch.exp(-(velocity[..., 0] ** 2)) * torch.cos(angle)
        moved = torch.stack([velocity[..., 0], acc], -1)
        return torch.cat([x[..., :2] + 0.05 * moved, (angle + 0.05 * turn)[..., None]], -1)


class Structural(nn.Module):
    """A product of two state-dependent matrices, a reshape of a transpose, sums, a mean, a
    gather and a broadcast: the reverse rules of the curvature beyond elementwise math."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.tensor([[0.3, -0.2, 0.1, 0.5], [0.2, 0.1, -0.4, 0.3]]))

    def forward(self, x, u):
        z = torch.cat([x, u], -1)  # (1, 4)
        outer = torch.tanh(z.t() @ z)  # (4, 4) of one row, both factors depend on z
        square = (outer @ outer.t()).t().reshape(1, 16)  # not contiguous: copied
        mixed = torch.sin(z @ self.W.t())  # (1, 2)
        spread = mixed[..., [1, 0, 1]] * square.sum(-1, keepdim=True) / 16.0
        tail = square[..., :3].expand(2, 3).mean(0, keepdim=True)
        return x + 0.05 * torch.cos(spread + tail).reshape(x.shape)


MODELS = {"pendulum": Pendulum, "mlp": MLPDynamics, "elementwise": Elementwise}


def _opted_out(module: nn.Module) -> nn.Module:
    """The same module opting out of tracing: the torch path."""
    plain = type(
        "Plain" + type(module).__name__, (type(module),), {"compiled_twin": lambda self: None}
    )()
    plain.load_state_dict(module.state_dict())
    return plain.to(next(module.parameters()).dtype)


def _states(batch: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    theta = (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5) * 2.0
    speed = torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5
    return torch.stack([theta.cos(), theta.sin(), speed], -1).to(dtype)


def _solve(mpc: MPC, x_init: torch.Tensor, cost: nn.Module, dynamics: nn.Module):
    x_init = x_init.clone().requires_grad_(True)
    solution = mpc(x_init, cost, dynamics)
    gen = torch.Generator().manual_seed(1)
    wx = torch.randn(solution.x.shape, generator=gen, dtype=torch.float64).to(x_init.dtype)
    wu = torch.randn(solution.u.shape, generator=gen, dtype=torch.float64).to(x_init.dtype)
    finite = ~solution.info.nonfinite
    loss = (solution.x[finite] * wx[finite]).sum() + (solution.u[finite] * wu[finite]).sum()
    leaves = [x_init, *dynamics.parameters()]
    return solution, torch.autograd.grad(loss, leaves, allow_unused=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 4])
def test_traced_path_equals_torch_path(
    dtype: torch.dtype, bounded: bool, model: str, batch: int
) -> None:
    """B = 1, and B = 4 with a NaN row (non-finite, the others unaffected)."""
    bound = 2.0 if bounded else None
    mpc = MPC(3, 1, T, u_lower=-bound if bound else None, u_upper=bound, max_iter=100)
    mpc = mpc.with_options(on_unconverged="ignore")
    dynamics = MODELS[model]().to(dtype)
    weights = torch.tensor([1.0, 1.0, 0.1, 0.1], dtype=dtype)
    C = torch.diag(2.0 * weights).expand(batch, T, 4, 4).clone()
    c = (-2.0 * weights * torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype)).expand(batch, T, 4)
    c = c.clone()
    if batch > 1:
        c[2, 5, 0] = math.nan  # a non-finite row (from the cost)
    cost = QuadraticCost(C, c)
    x_init = _states(batch, dtype)
    fast, fast_grads = _solve(mpc, x_init, cost, dynamics)
    slow, slow_grads = _solve(mpc, x_init, cost, _opted_out(dynamics))
    assert fast.info.path == "compiled-ddp" and fast.info.declined is None
    assert slow.info.path == "torch" and "no compiled twin" in slow.info.declined
    assert fast.info.status_names == slow.info.status_names
    if batch > 1:
        assert fast.info.status_names[2] == "NONFINITE"
    assert torch.equal(fast.info.iterations, slow.info.iterations)
    finite = ~fast.info.nonfinite
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(fast.u[finite], slow.u[finite], atol=tol, rtol=0)
    torch.testing.assert_close(fast.x[finite], slow.x[finite], atol=tol, rtol=0)
    rtol = 1e-10 if dtype == torch.float64 else 1e-3
    for ours, theirs in zip(fast_grads, slow_grads, strict=True):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            scale = theirs.abs().max().clamp(min=1.0)
            assert (ours - theirs).abs().max() <= rtol * scale


@pytest.mark.parametrize("model", sorted(MODELS))
def test_generated_derivatives_match_autograd(model: str) -> None:
    from mpc_policy.numerics.compiled import models
    from mpc_policy.numerics.compiled.traced import compile_traced

    dynamics = MODELS[model]().double()
    traced = trace(dynamics, 3, 1)
    assert not isinstance(traced, str), traced
    functions = compile_traced(traced.source, traced.work)
    p = flat_parameters(dynamics, traced, torch.float64)
    code, work = np.array(functions.addresses, dtype=np.int64), np.zeros(traced.work)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    u = 2.0 * torch.randn(8, 1, generator=gen, dtype=torch.float64)
    lam = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    f_next, _, curvature = dynamics_curvature(dynamics, x, u, lam)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda a, b: dynamics(a, b), argnums=(0, 1)))(x, u)
    jacobian = torch.cat(jacobian, -1)
    kind, none = models.DYNAMICS_TRACED, np.zeros(1)
    for r in range(8):
        xs, us, lams = np.zeros((2, 3)), np.zeros((2, 1)), np.zeros((2, 3))
        xs[0], us[0], lams[1] = x[r].numpy(), u[r].numpy(), lam[r].numpy()
        F, H = np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 4, 4))
        model_calls(kind, p, none, xs, us, lams, F, H, none, none, code, work)
        np.testing.assert_allclose(xs[1], f_next[r].detach().numpy(), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(F[0, 0], jacobian[r].detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(H[0, 0], curvature[r].detach().numpy(), rtol=1e-10, atol=1e-10)


def test_generated_derivatives_of_one_row_match_autograd() -> None:
    """``Structural`` (one row only: its z.t() @ z mixes rows) against autograd's Jacobian and
    Hessian of lam' f on single rows."""
    from mpc_policy.numerics.compiled.traced import compile_traced
    from mpc_policy.problem.trace import _pointer

    dynamics = Structural().double()
    traced = trace(dynamics, 3, 1)
    assert not isinstance(traced, str), traced
    step, jacobian, curvature = compile_traced(traced.source, traced.work).cfuncs
    p, work = flat_parameters(dynamics, traced, torch.float64), np.zeros(traced.work)
    gen = torch.Generator().manual_seed(4)

    def f(zz: torch.Tensor) -> torch.Tensor:
        return dynamics(zz[None, :3], zz[None, 3:])[0]

    for _ in range(4):
        z = torch.randn(4, generator=gen, dtype=torch.float64)
        lam = torch.randn(3, generator=gen, dtype=torch.float64)
        xs, us = np.zeros((2, 3)), np.ascontiguousarray(z[None, 3:].numpy())
        xs[0] = z[:3].numpy()
        lams, F, H = np.zeros((2, 3)), np.zeros((1, 1, 3, 4)), np.zeros((1, 1, 4, 4))
        lams[1] = lam.numpy()
        pointers = [_pointer(a) for a in (p, xs, us, work)]
        step(*pointers, 0, _pointer(xs), _pointer(xs))
        jacobian(*pointers, 0, _pointer(F), _pointer(F))
        curvature(*pointers, 0, _pointer(lams), _pointer(H))
        expected = torch.autograd.functional.hessian(lambda zz, lam=lam: lam @ f(zz), z)
        np.testing.assert_allclose(xs[1], f(z).detach().numpy(), rtol=1e-13, atol=1e-13)
        jac = torch.autograd.functional.jacobian(f, z).numpy()
        np.testing.assert_allclose(F[0, 0], jac, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(H[0, 0], expected.numpy(), rtol=1e-10, atol=1e-10)


def test_generated_tanh_within_two_ulps() -> None:
    """The generated code's tanh (``codegen.HELPERS``) against numpy's on both branches, the
    switch point, zeros (sign kept), overflow, infinities and NaN."""
    import numba

    from mpc_policy.numerics.compiled.codegen import HELPERS

    flags = {"reassoc", "contract"}  # as traced.py compiles it
    namespace = {"math": math, "_HELPER": numba.njit(error_model="numpy", fastmath=flags)}
    exec(HELPERS, namespace)
    gen = np.random.default_rng(5)
    scales = (1e-300, 1e-8, 0.1, 0.5, 1.0, 3.0, 20.0)
    a = np.concatenate([gen.standard_normal(20000) * scale for scale in scales])
    a = np.concatenate([a, [0.625, -0.625, np.nextafter(0.625, 0.0), 710.0, -800.0]])
    got = np.array([namespace["_tanh"](value) for value in a])
    expected = np.tanh(a)
    assert np.all(np.abs(got - expected) <= 2.0 * np.spacing(np.abs(expected)))
    special = [namespace["_tanh"](value) for value in (0.0, -0.0, math.inf, -math.inf, math.nan)]
    assert special[:4] == [0.0, -0.0, 1.0, -1.0] and math.copysign(1.0, special[1]) == -1.0
    assert math.isnan(special[4])


def test_trace_reused_and_parameters_read_at_every_solve() -> None:
    first, second = Pendulum().double(), Pendulum().double()
    assert trace(first, 3, 1) is trace(second, 3, 1)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001]).double(), torch.tensor([1.0, 0, 0, 0]).double()
    )
    x_init = _states(2, torch.float64)
    with torch.no_grad():
        second.g.fill_(4.0)
        fast = mpc(x_init, cost, second)
        slow = mpc(x_init, cost, _opted_out(second))
        before = mpc(x_init, cost, first)
    assert fast.info.path == "compiled-ddp"
    torch.testing.assert_close(fast.u, slow.u, atol=1e-9, rtol=0)
    assert (fast.u - before.u).abs().max() > 1e-3


class Branching(Pendulum):
    def forward(self, x, u, dt=0.05):
        if x[..., 0].sum() > 0:  # data-dependent control flow
            return super().forward(x, u, dt)
        return x


class Unsupported(Pendulum):
    def forward(self, x, u, dt=0.05):
        return super().forward(x, u, dt) + 0.0 * torch.erf(x)


class Coupled(Pendulum):
    def forward(self, x, u, dt=0.05):
        return super().forward(x, u, dt) - 0.1 * x.mean(0)  # rows depend on each other


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (Branching, "dynamics (Branching): its forward does not trace"),
        (Unsupported, "dynamics (Unsupported): aten.erf is not supported by the compiled path"),
        (Coupled, "dynamics (Coupled): the traced step differs from its forward on a batch"),
    ],
)
def test_untraceable_modules_fall_back_with_a_reason(module: type, reason: str) -> None:
    mpc = MPC(3, 1, 5, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    cost = GoalWeightedCost(torch.tensor([1.0, 1.0, 0.1, 0.001]), torch.tensor([1.0, 0, 0, 0]))
    solution = mpc(_states(2, torch.float32), cost, module())
    assert solution.info.path == "torch"
    assert solution.info.declined.startswith(reason), solution.info.declined
    assert "\n" not in solution.info.declined


def test_compat_pendulum_dx_traces_through_unbind_and_tensor_attributes() -> None:
    """mpc.pytorch's ``PendulumDx`` (``torch.unbind``, a plain tensor attribute of its
    parameters) runs on the compiled path and equals its torch path."""
    from mpc_policy.compat.env_dx.pendulum import PendulumDx

    dtype = torch.float64
    dynamics = PendulumDx().to(dtype)
    plain = type("PlainPendulumDx", (PendulumDx,), {"compiled_twin": lambda self: None})()
    plain.load_state_dict(dynamics.state_dict())
    plain = plain.to(dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype),
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype),
    )
    x_init = _states(3, dtype)
    fast, slow = mpc(x_init, cost, dynamics), mpc(x_init, cost, plain)
    assert fast.info.path == "compiled-ddp" and slow.info.path == "torch"
    assert fast.info.status_names == slow.info.status_names
    torch.testing.assert_close(fast.u, slow.u, atol=1e-9, rtol=0)


def test_compat_cartpole_dx_traces_and_equals_its_torch_path() -> None:
    """mpc.pytorch's ``CartpoleDx`` (a float32 parameter tensor, a clamp of the force) runs
    on the compiled path in float64 and equals its torch path."""
    from mpc_policy.compat.env_dx.cartpole import CartpoleDx

    dtype = torch.float64
    dynamics = CartpoleDx().to(dtype)  # no parameter: its float32 tensor stays float32
    plain = type("PlainCartpoleDx", (CartpoleDx,), {"compiled_twin": lambda self: None})()
    mpc = MPC(5, 1, T, u_lower=-20.0, u_upper=20.0, on_unconverged="ignore")
    weights = torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1, 0.001], dtype=dtype)
    goal = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=dtype)
    cost = GoalWeightedCost(weights, goal)
    theta = torch.tensor([0.3, -0.4, 2.5], dtype=dtype)
    zeros = torch.zeros(3, dtype=dtype)
    x_init = torch.stack([zeros + 0.1, zeros, theta.cos(), theta.sin(), zeros], -1)
    fast, slow = mpc(x_init, cost, dynamics), mpc(x_init, cost, plain)
    assert fast.info.path == "compiled-ddp", fast.info.declined
    assert slow.info.path == "torch"
    assert fast.info.status_names == slow.info.status_names
    torch.testing.assert_close(fast.u, slow.u, atol=1e-9, rtol=0)


class Guarded(Pendulum):
    """Non-finite constants in the graph: NaN outside a domain, an infinite clamp bound."""

    def forward(self, x, u, dt=0.05):
        out = super().forward(x, u.clamp(max=math.inf), dt)
        return torch.where(x[..., 2:].abs() > 1e6, torch.full_like(out, math.nan), out)


def test_non_finite_constants_compile() -> None:
    dtype = torch.float64
    dynamics = Guarded().to(dtype)
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype),
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype),
    )
    x_init = _states(2, dtype)
    fast, slow = mpc(x_init, cost, dynamics), mpc(x_init, cost, _opted_out(dynamics))
    assert fast.info.path == "compiled-ddp", fast.info.declined
    torch.testing.assert_close(fast.u, slow.u, atol=1e-9, rtol=0)
