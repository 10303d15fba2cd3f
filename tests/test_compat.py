"""The mpc.pytorch compatibility layer (``mpc_policy.compat``).

mpc.pytorch's README and its pendulum and cart-pole examples, changed only in the import
line, run and give the native API's controls; tests in the style of mpc.pytorch's own suite
(box-LQR against an exact QP, gradients against finite differences, affine and neural
dynamics modules with ``grad_input``, the slew-rate penalty, linearization methods) pass
against the layer; time-major and batch-first calls agree; the deliberate differences
(errors, warnings, detaching) behave as documented. When mpc.pytorch itself is importable
(not in the main environment: it pins numpy < 2) answers are compared with it on
well-converged problems.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.autograd import Variable

from mpc_policy import MPC as NativeMPC
from mpc_policy import ConvergenceError, QuadraticCost, lqr_solve
from mpc_policy.compat import mpc
from mpc_policy.compat.mpc import GradMethods, LinDx, QuadCost
from tests.oracles import (
    BoxLQRProblem,
    condense,
    lqr_margin,
    lqr_oracle_batch,
    random_box_lqr,
    solve_box_qp,
)

F64 = torch.float64


# ------------------------------------------------ models, as mpc.pytorch users write them
class PendulumDx(nn.Module):
    """mpc.pytorch's example pendulum: state (cos, sin, velocity), params (g, m, l)."""

    n_state, n_ctrl, lower, upper = 3, 1, -2.0, 2.0
    linesearch_decay, max_linesearch_iter = 0.2, 5

    def __init__(self, params: Tensor) -> None:
        super().__init__()
        self.params, self.dt = params, 0.05

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        g, m, l = self.params.unbind()
        torque = u[..., 0].clamp(-2.0, 2.0)
        cos, sin, velocity = x.unbind(-1)
        velocity = velocity + self.dt * (3.0 * g / (2.0 * l) * sin + 3.0 * torque / (m * l**2))
        theta = torch.atan2(sin, cos) + velocity * self.dt
        return torch.stack([torch.cos(theta), torch.sin(theta), velocity], dim=-1)


class CartpoleDx(nn.Module):
    """mpc.pytorch's example cart-pole: state (x, x_dot, cos, sin, theta_dot), force in +-100."""

    n_state, n_ctrl, lower, upper = 5, 1, -100.0, 100.0
    linesearch_decay, max_linesearch_iter = 0.5, 2

    def __init__(self) -> None:
        super().__init__()
        self.params, self.dt = torch.tensor([9.8, 1.0, 0.1, 0.5], dtype=F64), 0.05

    def forward(self, state: Tensor, u: Tensor) -> Tensor:
        gravity, cart_mass, pole_mass, length = self.params.unbind()
        total_mass = cart_mass + pole_mass
        force = u[..., 0].clamp(-100.0, 100.0)
        x, x_dot, cos, sin, theta_dot = state.unbind(-1)
        push = (force + pole_mass * length * theta_dot**2 * sin) / total_mass
        theta_acc = (gravity * sin - cos * push) / (
            length * (4.0 / 3.0 - pole_mass * cos**2 / total_mass)
        )
        x_acc = push - pole_mass * length * theta_acc * cos / total_mass
        theta = torch.atan2(sin, cos) + self.dt * theta_dot
        return torch.stack(
            [
                x + self.dt * x_dot,
                x_dot + self.dt * x_acc,
                torch.cos(theta),
                torch.sin(theta),
                theta_dot + self.dt * theta_acc,
            ],
            dim=-1,
        )

    def get_true_obj(self) -> tuple[Tensor, Tensor]:
        goal_weights = torch.tensor([0.1, 0.1, 1.0, 1.0, 0.1], dtype=F64)
        goal_state = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=F64)
        q = torch.cat([goal_weights, 0.001 * torch.ones(1, dtype=F64)])
        p = torch.cat([-torch.sqrt(goal_weights) * goal_state, torch.zeros(1, dtype=F64)])
        return q, p


class RowAffineDx(nn.Module):
    """x' = A x + B u + c on 2-D rows, with mpc.pytorch's ``grad_input`` -> (R, S)."""

    def __init__(self, A: Tensor, B: Tensor, c: Tensor | None = None) -> None:
        super().__init__()
        self.A, self.B, self.c = A, B, c

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        assert x.dim() == 2 and u.dim() == 2, "mpc.pytorch modules see 2-D rows"
        out = x @ self.A.T + u @ self.B.T
        return out if self.c is None else out + self.c

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        N = x.shape[0]
        return self.A.expand(N, *self.A.shape), self.B.expand(N, *self.B.shape)


class RowNNDx(nn.Module):
    """x' = x + W2 sigmoid(W1 [x; u] + b1) + b2 on 2-D rows; ``grad_input`` reads the
    activations cached by the last call, as mpc.pytorch's NNDynamics does."""

    def __init__(self, n: int, m: int, hidden: int, seed: int, rows_only: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(n + m, hidden).double(), nn.Linear(hidden, n).double()
        self.hidden, self.rows_only = torch.empty(0), rows_only

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        assert x.dim() == 2 or not self.rows_only, "mpc.pytorch modules see 2-D rows"
        self.hidden = torch.sigmoid(self.fc1(torch.cat([x, u], dim=-1)))
        return x + self.fc2(self.hidden)

    def grad_input(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        slope = self.hidden * (1.0 - self.hidden)  # (N, hidden), from the last call
        J = self.fc2.weight @ (slope.unsqueeze(-1) * self.fc1.weight)  # (N, n, n+m)
        n = x.shape[1]
        return J[..., :n] + torch.eye(n, dtype=x.dtype), J[..., n:]


def _time_major(problem: BoxLQRProblem) -> tuple[Tensor, ...]:
    """C [T, B, d, d], c [T, B, d], F [T-1, B, n, d], f [T-1, B, n] of a batch-first problem."""
    return tuple(z.transpose(0, 1) for z in problem[1:5])


def _nonlinear_problem(B: int, T: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """x_init [B, 2], and a strictly convex QuadCost's C [T, B, 4, 4], c [T, B, 4]."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(T, B, 4, 4, generator=g, dtype=F64)
    C = A @ A.transpose(-1, -2) + torch.eye(4, dtype=F64)
    return (
        torch.randn(B, 2, generator=g, dtype=F64),
        C,
        3.0 * torch.randn(T, B, 4, generator=g, dtype=F64),
    )


# ------------------------------------------------ mpc.pytorch's README and examples
def test_import_forms() -> None:
    from mpc_policy.compat.mpc import MPC

    assert mpc.MPC is MPC and mpc.QuadCost is QuadCost and mpc.LinDx is LinDx
    assert {g.name for g in mpc.GradMethods} >= {"AUTO_DIFF", "FINITE_DIFF", "ANALYTIC"}
    assert QuadCost(torch.eye(2)).c is None and LinDx(torch.ones(1, 2)).f is None


def test_readme_example_matches_native_and_exact_qp() -> None:
    # mpc.pytorch's README, with only the import line changed (and float64)
    torch.manual_seed(0)
    n_batch, n_state, n_ctrl, T = 2, 3, 4, 5
    n_sc = n_state + n_ctrl
    C = torch.randn(T * n_batch, n_sc, n_sc, dtype=F64)
    C = torch.bmm(C, C.transpose(1, 2)).view(T, n_batch, n_sc, n_sc)
    c = torch.randn(T, n_batch, n_sc, dtype=F64)
    alpha = 0.2
    R = (torch.eye(n_state) + alpha * torch.randn(n_state, n_state)).double()
    R = R.repeat(T, n_batch, 1, 1)
    S = torch.randn(T, n_batch, n_state, n_ctrl, dtype=F64)
    F = torch.cat((R, S), dim=3)
    x_init = torch.randn(n_batch, n_state, dtype=F64)
    u_lower = -torch.rand(T, n_batch, n_ctrl, dtype=F64)
    u_upper = torch.rand(T, n_batch, n_ctrl, dtype=F64)
    C, c, x_init, u_lower, u_upper, F = map(Variable, [C, c, x_init, u_lower, u_upper, F])
    x_lqr, u_lqr, objs_lqr = mpc.MPC(
        n_state=n_state,
        n_ctrl=n_ctrl,
        T=T,
        u_lower=u_lower,
        u_upper=u_upper,
        lqr_iter=20,
        verbose=1,
        backprop=False,
        exit_unconverged=False,
    )(x_init, QuadCost(C, c), LinDx(F))

    assert x_lqr.shape == (T, n_batch, n_state) and u_lqr.shape == (T, n_batch, n_ctrl)
    batch_first = [z.transpose(0, 1) for z in (C, c, F[:-1], u_lower, u_upper)]
    f = torch.zeros(n_batch, T - 1, n_state, dtype=F64)
    Cb, cb, Fb, lower, upper = batch_first
    native = lqr_solve(x_init, Cb, cb, Fb, f, lower, upper, max_iter=20)
    torch.testing.assert_close(u_lqr.transpose(0, 1), native.u, atol=1e-12, rtol=0)
    torch.testing.assert_close(objs_lqr, native.cost, atol=1e-12, rtol=1e-12)
    x_qp, u_qp, cost_qp = lqr_oracle_batch(BoxLQRProblem(x_init, Cb, cb, Fb, f, lower, upper))
    torch.testing.assert_close(u_lqr.transpose(0, 1), u_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(x_lqr.transpose(0, 1), x_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(objs_lqr, cost_qp, atol=1e-8, rtol=1e-8)


def _receding_horizon(dx: nn.Module, xinit: Tensor, Q: Tensor, p: Tensor, steps: int, mpc_T: int):
    """The loop of mpc.pytorch's pendulum and cart-pole notebooks (import line changed)."""
    n_batch = xinit.shape[0]
    x, u_init, actions = xinit, None, []
    for _ in range(steps):
        nominal_states, nominal_actions, nominal_objs = mpc.MPC(  # noqa: RUF059
            dx.n_state,
            dx.n_ctrl,
            mpc_T,
            u_init=u_init,
            u_lower=dx.lower,
            u_upper=dx.upper,
            lqr_iter=50,
            verbose=0,
            exit_unconverged=False,
            detach_unconverged=False,
            linesearch_decay=dx.linesearch_decay,
            max_linesearch_iter=dx.max_linesearch_iter,
            grad_method=GradMethods.AUTO_DIFF,
            eps=1e-2,
        )(x, QuadCost(Q, p), dx)
        next_action = nominal_actions[0]
        actions.append(next_action)
        u_init = torch.cat((nominal_actions[1:], torch.zeros(1, n_batch, dx.n_ctrl, dtype=F64)))
        u_init[-2] = u_init[-3]
        x = dx(x, next_action)
    return torch.stack(actions)


def _native_receding_horizon(dx: nn.Module, xinit: Tensor, Q: Tensor, p: Tensor, steps: int):
    """The same loop on the native API: batch-first, options by their own names."""
    controller = NativeMPC(
        dx.n_state,
        dx.n_ctrl,
        Q.shape[0],
        dx.lower,
        dx.upper,
        max_iter=50,
        tol=1e-2,
        line_search_decay=dx.linesearch_decay,
        max_line_search=dx.max_linesearch_iter,
        jacobian="autograd",
        on_unconverged="ignore",
    )
    cost = QuadraticCost(Q.transpose(0, 1), p.transpose(0, 1))
    x, u_init, actions = xinit, None, []
    for _ in range(steps):
        solution = controller(x, cost, dx, u_init)
        actions.append(solution.u[:, 0])
        u_init = torch.cat([solution.u[:, 1:], torch.zeros_like(solution.u[:, :1])], dim=1)
        u_init[:, -2] = u_init[:, -3]
        x = dx(x, solution.u[:, 0])
    return torch.stack(actions)


def test_pendulum_example_matches_native() -> None:
    params = torch.tensor((10.0, 1.0, 1.0), dtype=F64)
    dx = PendulumDx(params)
    n_batch, T, mpc_T = 4, 3, 10
    torch.manual_seed(0)
    th = (torch.rand(n_batch, dtype=F64) - 0.5) * math.pi
    thdot = 2.0 * torch.rand(n_batch, dtype=F64) - 1.0
    xinit = torch.stack((torch.cos(th), torch.sin(th), thdot), dim=1)
    goal_weights = torch.tensor((1.0, 1.0, 0.1), dtype=F64)
    goal_state = torch.tensor((1.0, 0.0, 0.0), dtype=F64)
    q = torch.cat((goal_weights, 0.001 * torch.ones(dx.n_ctrl, dtype=F64)))
    p = torch.cat((-torch.sqrt(goal_weights) * goal_state, torch.zeros(dx.n_ctrl, dtype=F64)))
    Q = torch.diag(q).unsqueeze(0).unsqueeze(0).repeat(mpc_T, n_batch, 1, 1)
    p = p.unsqueeze(0).repeat(mpc_T, n_batch, 1)

    actions = _receding_horizon(dx, xinit, Q, p, T, mpc_T)
    native = _native_receding_horizon(dx, xinit, Q, p, T)
    torch.testing.assert_close(actions, native, atol=1e-12, rtol=0)
    assert bool((actions.abs() <= 2.0).all())


def test_cartpole_example_matches_native() -> None:
    dx = CartpoleDx()
    n_batch, T, mpc_T = 2, 2, 10
    torch.manual_seed(0)
    th = (2.0 * torch.rand(n_batch, dtype=F64) - 1.0) * 2 * math.pi
    thdot, x, xdot = (torch.rand(3, n_batch, dtype=F64) - 0.5).unbind()
    xinit = torch.stack((x, xdot, torch.cos(th), torch.sin(th), thdot), dim=1)
    q, p = dx.get_true_obj()
    Q = torch.diag(q).unsqueeze(0).unsqueeze(0).repeat(mpc_T, n_batch, 1, 1)
    p = p.unsqueeze(0).repeat(mpc_T, n_batch, 1)

    actions = _receding_horizon(dx, xinit, Q, p, T, mpc_T)
    native = _native_receding_horizon(dx, xinit, Q, p, T)
    torch.testing.assert_close(actions, native, atol=1e-10, rtol=0)


# ------------------------------------------------ mpc.pytorch's test suite, on the layer
@pytest.mark.parametrize("bounded", [True, False])
def test_box_lqr_matches_exact_qp(bounded: bool) -> None:
    problem = random_box_lqr(4, 3, 2, 6, seed=3, bounded_fraction=(0.3, 0.6) if bounded else None)
    C, c, F, f = _time_major(problem)
    lower = None if problem.u_lower is None else problem.u_lower.transpose(0, 1)
    upper = None if problem.u_upper is None else problem.u_upper.transpose(0, 1)
    x, u, costs = mpc.MPC(3, 2, 6, lower, upper, lqr_iter=50)(
        problem.x_init, QuadCost(C, c), LinDx(F, f)
    )
    x_qp, u_qp, cost_qp = lqr_oracle_batch(problem)
    torch.testing.assert_close(u.transpose(0, 1), u_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(x.transpose(0, 1), x_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(costs, cost_qp, atol=1e-8, rtol=1e-8)


@pytest.mark.slow
def test_lindx_gradients_match_finite_differences() -> None:
    # mpc.pytorch's test_lqr_backward_cost_linear_dynamics_constrained: d u / d (c, F, f, x_init)
    problem = random_box_lqr(2, 2, 2, 3, seed=4, bounded_fraction=(0.3, 0.6))
    assert min(lqr_margin(problem, b) for b in range(2)) > 1e-3  # no active-set switch in FD
    C, c, F, f = _time_major(problem)
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    controller = mpc.MPC(2, 2, 3, lower, upper, lqr_iter=50)

    def controls(c: Tensor, F: Tensor, f: Tensor, x_init: Tensor) -> Tensor:
        return controller(x_init, QuadCost(C, c), LinDx(F, f))[1]

    inputs = tuple(z.detach().clone().requires_grad_(True) for z in (c, F, f, problem.x_init))
    assert torch.autograd.gradcheck(controls, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_single_element_single_control_backward() -> None:
    # mpc.pytorch's backward crashes when batch size x control size is 1 with bounds
    problem = random_box_lqr(1, 2, 1, 6, seed=16, bounded_fraction=(0.3, 0.6))
    C, c, F, f = (z.clone().requires_grad_(True) for z in _time_major(problem))
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    _, u, costs = mpc.MPC(2, 1, 6, lower, upper, lqr_iter=50)(
        problem.x_init, QuadCost(C, c), LinDx(F, f)
    )
    (u.sum() + costs.sum()).backward()
    assert all(bool(torch.isfinite(z.grad).all()) for z in (C, c, F, f))
    torch.testing.assert_close(u.transpose(0, 1), lqr_oracle_batch(problem)[1], atol=1e-8, rtol=0)


def test_affine_module_matches_lindx_with_gradients() -> None:
    # mpc.pytorch's test_lqr_backward_cost_affine_dynamics_module_constrained, all three
    # linearization methods
    n, m, T = 2, 2, 4
    x_init, C, c = _nonlinear_problem(3, T, seed=5)
    torch.manual_seed(5)
    F = (0.5 * torch.randn(1, 1, n, n + m, dtype=F64)).repeat(T - 1, 1, 1, 1).requires_grad_(True)
    weights = torch.randn(T, 3, m, dtype=F64)
    u_ref = mpc.MPC(n, m, T, -0.5, 0.5, lqr_iter=50)(x_init, QuadCost(C, c), LinDx(F))[1]
    (grad_ref,) = torch.autograd.grad((u_ref * weights).sum(), F)
    for method in (GradMethods.ANALYTIC, GradMethods.AUTO_DIFF, GradMethods.FINITE_DIFF):
        dynamics = RowAffineDx(F[0, 0, :, :n], F[0, 0, :, n:])
        controller = mpc.MPC(n, m, T, -0.5, 0.5, lqr_iter=50, grad_method=method, eps=1e-10)
        u = controller(x_init, QuadCost(C, c), dynamics)[1]
        (grad,) = torch.autograd.grad((u * weights).sum(), F)
        torch.testing.assert_close(u, u_ref, atol=1e-8, rtol=0)
        # the module shares F[0, 0] across steps: its gradient is the sum over the steps
        torch.testing.assert_close(grad[0, 0], grad_ref.sum((0, 1)), atol=1e-6, rtol=1e-6)
        assert not bool(grad[1:].any())


def _central_differences(loss, tensor: Tensor, h: float = 1e-5) -> Tensor:
    flat, grad = tensor.data.view(-1), torch.zeros(tensor.numel(), dtype=F64)
    for i in range(flat.numel()):
        original = flat[i].item()
        flat[i] = original + h
        up = loss()
        flat[i] = original - h
        down = loss()
        flat[i] = original
        grad[i] = (up - down) / (2 * h)
    return grad.view(tensor.shape)


@pytest.mark.slow
@pytest.mark.parametrize("slew", [None, 1.0])
def test_nn_dynamics_gradients_match_finite_differences(slew: float | None) -> None:
    # mpc.pytorch's test_lqr_backward_cost_nn_dynamics_module_constrained(_slew)
    n, m, T = 2, 2, 3
    x_init, C, c = _nonlinear_problem(2, T, seed=6)
    c = c.requires_grad_(True)
    dynamics = RowNNDx(n, m, hidden=8, seed=6)
    weights = torch.randn(T, 2, m, dtype=F64, generator=torch.Generator().manual_seed(6))
    prev = None if slew is None else torch.full((m,), 0.3, dtype=F64)
    settings = {"lqr_iter": 200, "eps": 1e-12, "slew_rate_penalty": slew, "prev_ctrl": prev}
    controller = mpc.MPC(n, m, T, -1.0, 1.0, **settings)

    def loss() -> float:
        with torch.no_grad():
            return float((controller(x_init, QuadCost(C, c), dynamics)[1] * weights).sum())

    u = controller(x_init, QuadCost(C, c), dynamics)[1]
    at_bound = (u.abs() > 1.0 - 1e-9).float().mean()
    assert 0.0 < at_bound < 1.0  # partly on the boundary, as in mpc.pytorch's test
    grad_c, grad_bias = torch.autograd.grad((u * weights).sum(), (c, dynamics.fc1.bias))
    torch.testing.assert_close(grad_c, _central_differences(loss, c), atol=1e-5, rtol=1e-4)
    fd_bias = _central_differences(loss, dynamics.fc1.bias)
    torch.testing.assert_close(grad_bias, fd_bias, atol=1e-5, rtol=1e-4)


def test_linearization_methods_agree() -> None:
    # mpc.pytorch's test_lqr_linearization, and the solves with each method
    n, m, T, B = 3, 4, 5, 2
    dynamics = RowNNDx(n, m, hidden=10, seed=7)
    controller = mpc.MPC(n, m, T, -2.0, 2.0, grad_method=GradMethods.ANALYTIC)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(T, B, m, generator=g, dtype=F64)
    x = [torch.randn(B, n, generator=g, dtype=F64)]
    for t in range(T - 1):
        x.append(dynamics(x[t], u[t]).detach())
    x = torch.stack(x)
    F_an, f_an = controller.linearize_dynamics(x, u, dynamics, diff=False)
    assert F_an.shape == (T - 1, B, n, n + m) and f_an.shape == (T - 1, B, n)
    for method in (GradMethods.AUTO_DIFF, GradMethods.FINITE_DIFF):
        controller.grad_method = method
        F_other, f_other = controller.linearize_dynamics(x, u, dynamics, diff=False)
        torch.testing.assert_close(F_other, F_an, atol=1e-8, rtol=1e-7)
        torch.testing.assert_close(f_other, f_an, atol=1e-8, rtol=1e-7)
    F_diff, _ = controller.linearize_dynamics(x, u, dynamics, diff=True)
    assert F_diff.requires_grad

    C = torch.eye(n + m, dtype=F64)  # one [n+m, n+m] term for every step and element
    c = torch.randn(T, B, n + m, dtype=F64, generator=g)
    x_init = torch.randn(B, n, dtype=F64, generator=g)
    solutions = [
        mpc.MPC(n, m, T, -0.5, 0.5, lqr_iter=100, eps=1e-9, grad_method=method)(
            x_init, QuadCost(C, c), dynamics
        )[1]
        for method in (GradMethods.ANALYTIC, GradMethods.AUTO_DIFF, GradMethods.FINITE_DIFF)
    ]
    for other in solutions[1:]:
        torch.testing.assert_close(other, solutions[0], atol=1e-6, rtol=0)


def _slew_oracle(problem: BoxLQRProblem, gamma: float, prev: Tensor) -> Tensor:
    """Exact controls (B, T, m) with gamma/2 sum_t ||u_t - u_{t-1}||^2 added, u_0 = prev."""
    B, T, d = problem.c.shape
    m = d - problem.x_init.shape[1]
    ones = torch.ones((T - 1) * m, dtype=F64)
    D = torch.eye(T * m, dtype=F64) - torch.diag(ones, -m)  # U -> (u_t - u_{t-1})_t
    controls = []
    for b in range(B):
        _, _, H, g, _ = condense(*(z[b] for z in problem[:5]))
        e = torch.cat([prev[b], torch.zeros((T - 1) * m, dtype=F64)])
        H, g = H + gamma * D.T @ D, g - gamma * D.T @ e
        lower = problem.u_lower[b].reshape(-1).numpy()
        upper = problem.u_upper[b].reshape(-1).numpy()
        U = solve_box_qp(H.numpy(), g.numpy(), lower, upper).x
        controls.append(torch.from_numpy(U).view(T, m))
    return torch.stack(controls)


def test_slew_rate_penalty_matches_exact_qp() -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=8, bounded_fraction=(0.2, 0.5))
    C, c, F, f = _time_major(problem)
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    prev = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    expected = _slew_oracle(problem, 2.0, prev)
    _, u, _ = mpc.MPC(3, 2, 5, lower, upper, lqr_iter=50, slew_rate_penalty=2.0, prev_ctrl=prev)(
        problem.x_init, QuadCost(C, c), LinDx(F, f)
    )
    torch.testing.assert_close(u.transpose(0, 1), expected, atol=1e-8, rtol=1e-8)
    # the same problem with the dynamics as a module (box-DDP on the augmented state)
    dynamics = RowAffineDx(F[0, 0, :, :3], F[0, 0, :, 3:], f[0, 0])
    F_shared, f_shared = (z[:1, :1].expand_as(z).transpose(0, 1) for z in (F, f))
    shared = problem._replace(F=F_shared, f=f_shared)
    _, u_module, _ = mpc.MPC(
        3, 2, 5, lower, upper, lqr_iter=50, eps=1e-12, slew_rate_penalty=2.0, prev_ctrl=prev
    )(problem.x_init, QuadCost(C, c), dynamics)
    torch.testing.assert_close(
        u_module.transpose(0, 1), _slew_oracle(shared, 2.0, prev), atol=1e-8, rtol=1e-8
    )


def test_slew_rate_penalty_properties() -> None:
    # mpc.pytorch's test_lqr_slew_rate: unbounded, affine module, float64
    torch.manual_seed(1)
    n, m, T = 3, 4, 5
    C = torch.randn(T, 2, n + m, n + m, dtype=F64)
    C = C.transpose(2, 3) @ C
    c = torch.randn(T, 2, n + m, dtype=F64)
    x_init = torch.randn(2, n, dtype=F64)
    dynamics = RowAffineDx(
        torch.eye(n, dtype=F64) + 0.2 * torch.randn(n, n, dtype=F64),
        torch.randn(n, m, dtype=F64),
        torch.randn(n, dtype=F64),
    )
    results = {}
    for gamma in (None, 1e-6, 1.0):
        controller = mpc.MPC(n, m, T, lqr_iter=10, slew_rate_penalty=gamma, backprop=False)
        results[gamma] = controller(x_init, QuadCost(C, c), dynamics)
    x, u, objs = results[None]
    torch.testing.assert_close(results[1e-6][0], x, atol=1e-4, rtol=0)
    torch.testing.assert_close(results[1e-6][1], u, atol=1e-4, rtol=0)
    _, u_slew, objs_slew = results[1.0]
    assert bool((objs < objs_slew).all())
    assert float(torch.norm(u_slew[:-1] - u_slew[1:])) < float(torch.norm(u[:-1] - u[1:]))


def test_cost_module_matches_quadcost() -> None:
    # a non-quadratic-capable cost module (row-wise, mpc.pytorch's form) written as a quadratic
    n, m, T, B = 2, 2, 4, 3
    x_init, C, c = _nonlinear_problem(B, T, seed=9)
    C, c = C[0, 0], c[0, 0]  # time- and batch-invariant: a module cost applies to every step
    dynamics = RowNNDx(n, m, hidden=6, seed=9)

    class RowQuadratic(nn.Module):
        def forward(self, tau: Tensor) -> Tensor:
            return 0.5 * torch.einsum("ni,ij,nj->n", tau, C, tau) + tau @ c

    for gamma in (None, 0.5):
        solve = mpc.MPC(n, m, T, -0.4, 0.4, lqr_iter=100, eps=1e-10, slew_rate_penalty=gamma)
        _, u_q, cost_q = solve(x_init, QuadCost(C, c), dynamics)
        _, u_m, cost_m = solve(x_init, RowQuadratic(), dynamics)
        torch.testing.assert_close(u_m, u_q, atol=1e-8, rtol=0)
        torch.testing.assert_close(cost_m, cost_q, atol=1e-9, rtol=1e-9)
    # with LinDx dynamics (time-invariant), the module cost goes through box-DDP as well
    F = torch.randn(n, n + m, dtype=F64, generator=torch.Generator().manual_seed(9)) / 2
    u_q = mpc.MPC(n, m, T, -0.4, 0.4, lqr_iter=50)(x_init, QuadCost(C, c), LinDx(F))[1]
    u_m = mpc.MPC(n, m, T, -0.4, 0.4, lqr_iter=50, eps=1e-12)(x_init, RowQuadratic(), LinDx(F))[1]
    torch.testing.assert_close(u_m, u_q, atol=1e-8, rtol=0)


# ------------------------------------------------ layouts and the native API
def test_time_major_and_batch_first_agree() -> None:
    n, m, T, B = 2, 2, 5, 3
    x_init, C, c = _nonlinear_problem(B, T, seed=10)
    dynamics = RowNNDx(n, m, hidden=6, seed=10, rows_only=False)  # the native API's form
    lower = -0.5 - torch.rand(T, B, m, dtype=F64, generator=torch.Generator().manual_seed(10))
    leaves = [z.clone().requires_grad_(True) for z in (x_init, C, c, lower)]
    x, u, costs = mpc.MPC(n, m, T, leaves[3], 0.6, lqr_iter=100, eps=1e-10)(
        leaves[0], QuadCost(leaves[1], leaves[2]), dynamics
    )
    native_leaves = [z.clone().requires_grad_(True) for z in (x_init, C, c, lower)]
    x0, Cn, cn, lo = native_leaves
    native = NativeMPC(n, m, T, lo.transpose(0, 1), 0.6, max_iter=100, tol=1e-10)(
        x0, QuadraticCost(Cn.transpose(0, 1), cn.transpose(0, 1)), dynamics
    )
    torch.testing.assert_close(x.transpose(0, 1), native.x, atol=1e-12, rtol=0)
    torch.testing.assert_close(u.transpose(0, 1), native.u, atol=1e-12, rtol=0)
    torch.testing.assert_close(costs, native.cost, atol=1e-12, rtol=1e-12)
    weights = torch.randn(B, T, m, dtype=F64, generator=torch.Generator().manual_seed(11))
    grads = torch.autograd.grad((u.transpose(0, 1) * weights).sum() + costs.sum(), leaves)
    native_grads = torch.autograd.grad(
        (native.u * weights).sum() + native.cost.sum(), native_leaves
    )
    for ours, theirs in zip(grads, native_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def test_terms_without_batch_or_time_dimensions_broadcast() -> None:
    problem = random_box_lqr(3, 2, 2, 4, seed=12, bounded_fraction=None)
    C0, c0, F0, f0 = (z[0, 0] for z in problem[1:5])  # one step of one element
    T, B, x_init = 4, 3, problem.x_init
    full_cost = QuadCost(C0.expand(T, B, 4, 4), c0.expand(T, B, 4))
    full_dx = LinDx(F0.expand(T - 1, B, 2, 4), f0.expand(T - 1, B, 2))
    controller = mpc.MPC(2, 2, T, -0.3, 0.3, lqr_iter=20)
    reference = controller(x_init, full_cost, full_dx)[1]
    forms = [
        (QuadCost(C0, c0), LinDx(F0, f0)),  # no time, no batch dimension
        (
            QuadCost(C0.expand(T, 4, 4), c0.expand(T, 4)),  # no batch dimension
            LinDx(F0.expand(T - 1, 2, 4), f0.expand(T - 1, 2)),
        ),
        (
            QuadCost(C0.expand(T, 1, 4, 4), c0.expand(T, 1, 4)),  # batch of one
            LinDx(F0.expand(T, 1, 2, 4), f0.expand(T, 1, 2)),  # T steps: the last is unused
        ),
    ]
    for cost, dynamics in forms:
        torch.testing.assert_close(
            controller(x_init, cost, dynamics)[1], reference, atol=1e-12, rtol=0
        )
    zero_c, zero_f = torch.zeros_like(full_cost.c), torch.zeros_like(full_dx.f)
    reference = controller(x_init, QuadCost(full_cost.C, zero_c), LinDx(full_dx.F, zero_f))[1]
    for cost, dynamics in (
        (QuadCost(full_cost.C), LinDx(full_dx.F)),  # c and f default to zero
        (QuadCost(full_cost.C, None), LinDx(full_dx.F, torch.Tensor())),  # so does an empty f
    ):
        torch.testing.assert_close(
            controller(x_init, cost, dynamics)[1], reference, atol=1e-12, rtol=0
        )


def test_zero_controls_mask() -> None:
    problem = random_box_lqr(3, 3, 2, 5, seed=13, bounded_fraction=(0.2, 0.5))
    C, c, F, f = _time_major(problem)
    zero = torch.rand(5, 3, 2, generator=torch.Generator().manual_seed(13)) < 0.3
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    # positional as in mpc.pytorch 0.0.6: (n_state, n_ctrl, T, u_lower, u_upper, u_zero_I)
    _, u, _ = mpc.MPC(3, 2, 5, lower, upper, zero, lqr_iter=50)(
        problem.x_init, QuadCost(C, c), LinDx(F, f)
    )
    assert bool((u[zero] == 0).all())
    tiny = torch.full_like(lower, 1e-10)
    pinned = problem._replace(
        u_lower=torch.where(zero, -tiny, lower).transpose(0, 1),
        u_upper=torch.where(zero, tiny, upper).transpose(0, 1),
    )
    torch.testing.assert_close(u.transpose(0, 1), lqr_oracle_batch(pinned)[1], atol=1e-8, rtol=0)


def _pendulum_batch(B: int, dtype: torch.dtype = F64) -> tuple[PendulumDx, Tensor, QuadCost]:
    """Pendulum swing-up problems: the dynamics, x_init [B, 3] (element 0 upright, at rest)."""
    dx = PendulumDx(torch.tensor((10.0, 1.0, 1.0), dtype=dtype))
    theta, velocity = torch.linspace(0.0, 0.3, B, dtype=dtype), torch.linspace(0.0, -0.3, B)
    x_init = torch.stack([torch.cos(theta), torch.sin(theta), velocity.to(dtype)], dim=1)
    q = torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype)
    p = torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=dtype)
    return dx, x_init, QuadCost(torch.diag(q).expand(10, 4, 4), p.expand(10, 4))


def test_unconverged_elements_follow_the_chosen_policy() -> None:
    dx, x_init, cost = _pendulum_batch(3)
    x0 = x_init.clone().requires_grad_(True)
    settings = {"lqr_iter": 2, "grad_method": GradMethods.AUTO_DIFF, "eps": 1e-10}
    # mpc.pytorch's defaults (exit_unconverged, detach_unconverged) stop: here, an exception
    with pytest.raises(ConvergenceError, match="did not reach a fixed point"):
        mpc.MPC(3, 1, 10, -2.0, 2.0, **settings)(x0, cost, dx)
    # detach_unconverged alone: a warning, and no gradient from the unconverged elements
    controller = mpc.MPC(3, 1, 10, -2.0, 2.0, exit_unconverged=False, **settings)
    with pytest.warns(RuntimeWarning, match="gradients are zeroed"):
        _, u, costs = controller(x0, cost, dx)
    converged = controller.last_info.converged
    assert converged.tolist() == [True, False, False]
    (grad,) = torch.autograd.grad(u.sum() + costs.sum(), x0)
    assert bool(grad[0].any()) and not bool(grad[1:].any())
    # detach_unconverged=False: mpc.pytorch is silent; here a warning, and gradients flow
    controller = mpc.MPC(3, 1, 10, -2.0, 2.0, detach_unconverged=False, **settings)
    with pytest.warns(RuntimeWarning, match="2 of 3 batch elements"):
        _, u, _ = controller(x0, cost, dx)
    assert bool(torch.autograd.grad(u.sum(), x0)[0][1:].any())
    # verbose=-1: no warning, the report is still in last_info
    controller = mpc.MPC(3, 1, 10, -2.0, 2.0, detach_unconverged=False, verbose=-1, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        controller(x0, cost, dx)
    assert controller.last_info.unconverged_indices == [1, 2]


def test_backprop_false_verbose_and_float32(caplog: pytest.LogCaptureFixture) -> None:
    dx, x_init, cost = _pendulum_batch(4)
    x0 = x_init.clone().requires_grad_(True)
    settings = {"lqr_iter": 100, "grad_method": GradMethods.AUTO_DIFF}
    with caplog.at_level("INFO", logger="mpc_policy.compat.mpc"):
        x, u, costs = mpc.MPC(3, 1, 10, -2.0, 2.0, backprop=False, verbose=1, **settings)(
            x0, cost, dx
        )
    # backprop=False has no effect, as in mpc.pytorch (issue 24): the gradient still flows
    assert x.requires_grad and u.requires_grad and costs.requires_grad
    assert "4 of 4 elements converged" in caplog.text
    # float32 with the default eps converges (mpc.pytorch's 1e-7 never does) and agrees
    dx32, x32, cost32 = _pendulum_batch(4, torch.float32)
    controller = mpc.MPC(3, 1, 10, -2.0, 2.0, **settings)
    _, u32, _ = controller(x32, cost32, dx32)
    assert controller.last_info.all_converged and u32.dtype == torch.float32
    torch.testing.assert_close(u32.double(), u, atol=2e-3, rtol=0)


def test_batch_elements_are_independent() -> None:
    dx, x_init, cost = _pendulum_batch(5)
    controller = mpc.MPC(3, 1, 10, -2.0, 2.0, lqr_iter=100, grad_method=GradMethods.AUTO_DIFF)
    _, u_batch, cost_batch = controller(x_init, cost, dx)
    for b in (1, 3):
        _, u_one, cost_one = controller(x_init[b : b + 1], cost, dx)
        torch.testing.assert_close(u_one[:, 0], u_batch[:, b], atol=1e-10, rtol=0)
        torch.testing.assert_close(cost_one[0], cost_batch[b], atol=1e-10, rtol=1e-10)


def test_arguments_without_an_equivalent_raise_clear_errors() -> None:
    dx, x_init, cost = _pendulum_batch(2)
    with pytest.raises(ValueError, match="delta_u: expected a positive float or None"):
        mpc.MPC(3, 1, 10, -2.0, 2.0, delta_u=-0.1)
    with pytest.raises(ValueError, match=r"grad_method: expected GradMethods\.AUTO_DIFF"):
        mpc.MPC(3, 1, 10, grad_method=GradMethods.ANALYTIC_CHECK)
    with pytest.raises(ValueError, match="line_search_decay"):
        mpc.MPC(3, 1, 10, linesearch_decay=1.5)
    with pytest.raises(TypeError, match="grad_input"):  # ANALYTIC is mpc.pytorch's default
        mpc.MPC(3, 1, 10, -2.0, 2.0)(x_init, cost, dx)
    with pytest.raises(ValueError, match="n_batch: expected the batch size of x_init"):
        mpc.MPC(3, 1, 10, n_batch=5, grad_method=GradMethods.AUTO_DIFF)(x_init, cost, dx)
    with pytest.raises(ValueError, match=r"QuadCost.C: expected shape \(T, B, 4, 4\)"):
        mpc.MPC(3, 1, 10)(x_init, QuadCost(torch.eye(3, dtype=F64)), LinDx(torch.eye(3, 4)))
    with pytest.raises(ValueError, match=r"x_init: expected shape \[B, n_state\]"):
        mpc.MPC(3, 1, 10)(x_init[0], cost, LinDx(torch.eye(3, 4)))
    F = torch.randn(9, 2, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="time-varying LinDx with a cost module"):
        mpc.MPC(3, 1, 10)(x_init, nn.Identity(), LinDx(F))
    with pytest.raises(TypeError, match=r"cost: expected a QuadCost or an nn\.Module"):
        mpc.MPC(3, 1, 10)(x_init, (torch.eye(4),), LinDx(F))


# ------------------------------------------------ against mpc.pytorch itself
@pytest.fixture
def reference():
    """mpc.pytorch's ``mpc.mpc``; absent next to numpy 2 (run in a numpy < 2 environment)."""
    return pytest.importorskip("mpc.mpc")


def test_reference_box_lqr_and_gradients(reference) -> None:
    problem = random_box_lqr(2, 3, 2, 5, seed=14, bounded_fraction=(0.3, 0.6))
    C, c, F, f = _time_major(problem)
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    weights = torch.randn(5, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(14))
    answers = []
    for library in (mpc, reference):
        leaves = [z.clone().requires_grad_(True) for z in (c, F, f, problem.x_init)]
        _, u, costs = library.MPC(3, 2, 5, lower, upper, lqr_iter=50, eps=1e-10, verbose=-1)(
            leaves[3], library.QuadCost(C, leaves[0]), library.LinDx(leaves[1], leaves[2])
        )
        answers.append((u, costs, torch.autograd.grad((u * weights).sum(), leaves)))
    (u, costs, grads), (u_ref, costs_ref, grads_ref) = answers
    torch.testing.assert_close(u, u_ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(costs, costs_ref, atol=1e-8, rtol=1e-8)
    for ours, theirs in zip(grads, grads_ref):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_reference_slew_rate_penalty(reference) -> None:
    # mpc.pytorch's slew-rate penalty crashes with LinDx dynamics (its line search calls
    # the missing dynamics module): compare with an affine dynamics module
    problem = random_box_lqr(2, 3, 2, 5, seed=15, bounded_fraction=None)
    C, c, F, f = _time_major(problem)
    dynamics = RowAffineDx(F[0, 0, :, :3], F[0, 0, :, 3:], f[0, 0])
    prev = torch.tensor([[0.5, -0.2], [0.1, 0.3]], dtype=F64)
    answers = [
        library.MPC(3, 2, 5, lqr_iter=20, slew_rate_penalty=1.5, prev_ctrl=prev, verbose=-1)(
            problem.x_init, library.QuadCost(C, c), dynamics
        )
        for library in (mpc, reference)
    ]
    torch.testing.assert_close(answers[0][1], answers[1][1], atol=1e-8, rtol=0)
    torch.testing.assert_close(answers[0][2], answers[1][2], atol=1e-8, rtol=1e-8)


def test_reference_pendulum(reference) -> None:
    dx, x_init, cost = _pendulum_batch(4)
    settings = {"lqr_iter": 100, "eps": 1e-10, "verbose": -1, "n_batch": 4}
    answers = [
        library.MPC(3, 1, 10, -2.0, 2.0, grad_method=library.GradMethods.AUTO_DIFF, **settings)(
            x_init, library.QuadCost(*cost), dx
        )
        for library in (mpc, reference)
    ]
    (_, u, costs), (_, u_ref, costs_ref) = answers
    torch.testing.assert_close(costs, costs_ref, atol=1e-8, rtol=1e-8)
    # mpc.pytorch stops with free-control gradients near 1e-6 (here: 1e-12), on a flat
    # optimum: its controls are 1e-4 away and its costs a little higher
    assert bool((costs <= costs_ref + 1e-12).all())
    torch.testing.assert_close(u, u_ref, atol=2e-4, rtol=0)


def test_reference_gradients_are_the_paper_rule(reference) -> None:
    # mpc.pytorch differentiates the last convex approximation: diff_rule="paper" gives its
    # gradients; the default "exact" gives the true ones (checked by finite differences above)
    n, m, T = 2, 2, 3
    x_init, C, c = _nonlinear_problem(2, T, seed=6)
    dynamics = RowNNDx(n, m, hidden=8, seed=6)
    weights = torch.randn(T, 2, m, dtype=F64, generator=torch.Generator().manual_seed(6))
    grads = []
    for library, options in ((mpc, {"diff_rule": "paper"}), (reference, {})):
        c_leaf, x_leaf = c.clone().requires_grad_(True), x_init.clone().requires_grad_(True)
        options.update(lqr_iter=200, eps=1e-12, verbose=-1)
        controller = library.MPC(n, m, T, -1.0, 1.0, **options)
        u = controller(x_leaf, library.QuadCost(C, c_leaf), dynamics)[1]
        leaves = (c_leaf, x_leaf, dynamics.fc1.bias, dynamics.fc2.weight)
        grads.append(torch.autograd.grad((u * weights).sum(), leaves))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
