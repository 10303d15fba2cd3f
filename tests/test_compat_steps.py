"""The solver side of ``mpc_policy.compat`` that issue 14 added: ``delta_u`` (the trust region
on the control change per iteration), ``lqr_step.LQRStep``, ``MPC.approximate_cost``,
``MPC.solve_lqr_subproblem``, ``SlewRateCost``, and contiguous gradients for every input.

Oracles: the exact dense box-QP solution of tests/oracles.py (and its differentiable
fixed-active-set form), finite differences, and the same problem solved without the
feature; mpc.pytorch itself where it is importable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from mpc_policy import ConvergenceError
from mpc_policy.compat import lqr_step, mpc, util
from mpc_policy.compat.dynamics import AffineDynamics, NNDynamics
from mpc_policy.compat.mpc import GradMethods, LinDx, QuadCost, SlewRateCost
from tests.oracles import active_set_lqr, lqr_oracle, lqr_oracle_batch, random_box_lqr
from tests.test_compat_modules import _upstream

F64 = torch.float64


def _problem(B: int = 3, n: int = 3, m: int = 2, T: int = 5, seed: int = 3):
    problem = random_box_lqr(B, n, m, T, seed=seed, bounded_fraction=(0.3, 0.6))
    C, c, F, f = (z.transpose(0, 1) for z in problem[1:5])
    lower, upper = problem.u_lower.transpose(0, 1), problem.u_upper.transpose(0, 1)
    return problem, C, c, F, f, lower, upper


def _quiet(*args, **kwargs) -> mpc.MPC:
    """An MPC that reports unconverged elements in last_info only (keeps their gradient)."""
    kwargs.setdefault("exit_unconverged", False)
    kwargs.setdefault("detach_unconverged", False)
    kwargs.setdefault("verbose", -1)
    return mpc.MPC(*args, **kwargs)


# ------------------------------------------------ delta_u
@pytest.mark.parametrize("bounded", [True, False])
def test_delta_u_limits_every_iteration_and_converges_to_the_optimum(bounded: bool) -> None:
    problem, C, c, F, f, lower, upper = _problem()
    if not bounded:
        lower = upper = None
    delta = 0.05
    previous = torch.zeros(5, 3, 2, dtype=F64)
    for iterations in range(1, 5):
        u = _quiet(3, 2, 5, lower, upper, lqr_iter=iterations, delta_u=delta)(
            problem.x_init, QuadCost(C, c), LinDx(F, f)
        )[1]
        assert float((u - previous).abs().max()) <= delta + 1e-12
        previous = u
    solver = _quiet(3, 2, 5, lower, upper, lqr_iter=200, delta_u=delta)
    _x, u, costs = solver(problem.x_init, QuadCost(C, c), LinDx(F, f))
    assert solver.last_info is not None and solver.last_info.all_converged
    if bounded:
        _x_qp, u_qp, cost_qp = lqr_oracle_batch(problem)
        torch.testing.assert_close(u.transpose(0, 1), u_qp, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(costs, cost_qp, atol=1e-8, rtol=1e-8)
    plain = mpc.MPC(3, 2, 5, lower, upper, lqr_iter=50)(problem.x_init, QuadCost(C, c), LinDx(F, f))
    torch.testing.assert_close(u, plain[1], atol=1e-8, rtol=1e-8)


def test_delta_u_gradients_are_those_without_it() -> None:
    problem, C, c, F, f, lower, upper = _problem(B=2, T=3, n=2, seed=4)

    def controls(delta_u: float | None, c: Tensor, F: Tensor, x_init: Tensor) -> Tensor:
        solver = mpc.MPC(2, 2, 3, lower, upper, lqr_iter=200, delta_u=delta_u)
        return solver(x_init, QuadCost(C, c), LinDx(F, f))[1]

    inputs = [z.detach().clone().requires_grad_(True) for z in (c, F, problem.x_init)]
    weights = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with_region = torch.autograd.grad((controls(0.1, *inputs) * weights).sum(), inputs)
    without = torch.autograd.grad((controls(None, *inputs) * weights).sum(), inputs)
    for a, b in zip(with_region, without):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_delta_u_with_a_dynamics_module() -> None:
    torch.manual_seed(0)
    dx = NNDynamics(2, 2, [8], "sigmoid").double()
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4, 1, 4, 4, generator=g, dtype=F64)
    cost = QuadCost(
        A @ A.transpose(-1, -2) + torch.eye(4, dtype=F64),
        3.0 * torch.randn(4, 1, 4, generator=g, dtype=F64),
    )
    x_init = torch.randn(1, 2, generator=g, dtype=F64)
    previous = torch.zeros(4, 1, 2, dtype=F64)
    for iterations in (1, 2, 3):
        u = _quiet(2, 2, 4, -1.0, 1.0, lqr_iter=iterations, delta_u=0.1)(x_init, cost, dx)[1]
        assert float((u - previous).detach().abs().max()) <= 0.1 + 1e-12
        previous = u
    solver = _quiet(2, 2, 4, -1.0, 1.0, lqr_iter=100, delta_u=0.1)
    u = solver(x_init, cost, dx)[1]
    assert solver.last_info is not None and solver.last_info.all_converged
    plain = _quiet(2, 2, 4, -1.0, 1.0, lqr_iter=100)(x_init, cost, dx)[1]
    torch.testing.assert_close(u, plain, atol=1e-6, rtol=1e-6)


def test_delta_u_elements_are_independent_of_their_batch() -> None:
    problem, C, c, F, f, lower, upper = _problem()
    kwargs = {"lqr_iter": 4, "delta_u": 0.05}
    _, u_batch, cost_batch = _quiet(3, 2, 5, lower, upper, **kwargs)(
        problem.x_init, QuadCost(C, c), LinDx(F, f)
    )
    for b in range(3):
        one = slice(b, b + 1)
        _, u_one, cost_one = _quiet(3, 2, 5, lower[:, one], upper[:, one], **kwargs)(
            problem.x_init[one], QuadCost(C[:, one], c[:, one]), LinDx(F[:, one], f[:, one])
        )
        torch.testing.assert_close(u_one[:, 0], u_batch[:, b], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(cost_one[0], cost_batch[b], atol=1e-12, rtol=1e-12)


def test_delta_u_unconverged_elements_are_reported_and_detached() -> None:
    problem, C, c, F, f, lower, upper = _problem()
    c = c.clone().requires_grad_(True)
    solver = mpc.MPC(
        3, 2, 5, lower, upper, lqr_iter=1, delta_u=1e-3, exit_unconverged=False, verbose=-1
    )
    u = solver(problem.x_init, QuadCost(C, c), LinDx(F, f))[1]
    assert solver.last_info is not None and not bool(solver.last_info.converged.any())
    (grad,) = torch.autograd.grad(u.sum(), c, allow_unused=True)
    assert grad is None or not bool(grad.any())  # unconverged: no gradient flows
    with pytest.raises(ConvergenceError):
        mpc.MPC(3, 2, 5, lower, upper, lqr_iter=1, delta_u=1e-3)(
            problem.x_init, QuadCost(C, c), LinDx(F, f)
        )


def test_delta_u_matches_mpc_pytorch() -> None:
    reference = _upstream("mpc.mpc")
    problem, C, c, F, f, lower, upper = _problem()
    for module in (mpc, reference):  # mpc.pytorch's test_lqr_linear_bounded_delta, both ways
        u = module.MPC(
            3,
            2,
            5,
            lower,
            upper,
            lqr_iter=1,
            delta_u=0.05,
            exit_unconverged=False,
            verbose=-1,
            backprop=False,
        )(problem.x_init, module.QuadCost(C, c), module.LinDx(F, f))[1]
        assert float(u.abs().max()) <= 0.05 + 1e-12
    kwargs = {
        "lqr_iter": 100,
        "delta_u": 0.2,
        "exit_unconverged": False,
        "verbose": -1,
        "eps": 1e-10,
    }
    ours = mpc.MPC(3, 2, 5, lower, upper, **kwargs)(problem.x_init, QuadCost(C, c), LinDx(F, f))
    theirs = reference.MPC(3, 2, 5, lower, upper, **kwargs)(
        problem.x_init, reference.QuadCost(C, c), reference.LinDx(F, f)
    )
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-6, rtol=1e-6)


# ------------------------------------------------ contiguous gradients
@pytest.mark.parametrize("kind", ["lindx", "affine module", "nn module"])
@pytest.mark.parametrize("slew", [None, 0.5])
def test_every_input_gets_a_contiguous_gradient(kind: str, slew: float | None) -> None:
    problem, C, c, F, f, lower, upper = _problem(B=2, n=2, T=3, seed=4)
    torch.manual_seed(0)
    leaves = {
        "x_init": problem.x_init.clone(),
        "C": C.clone(),  # [T, B, d, d], contiguous, as a user makes it
        "c": c.clone(),
        "u_lower": lower.clone(),
        "u_upper": upper.clone(),
        "prev_ctrl": torch.full((2, 2), 0.1, dtype=F64),
    }
    if kind == "lindx":
        leaves.update(F=F.clone(), f=f.clone())
        dx = None
    elif kind == "affine module":
        leaves.update(A=F[0, 0, :, :2].clone(), B=F[0, 0, :, 2:].clone())
    for value in leaves.values():
        value.requires_grad_(True)
    if kind == "lindx":
        dx = LinDx(leaves["F"], leaves["f"])
    elif kind == "affine module":
        dx = AffineDynamics(leaves["A"], leaves["B"])
    else:
        dx = NNDynamics(2, 2, [6]).double()
    solver = mpc.MPC(
        2,
        2,
        3,
        leaves["u_lower"],
        leaves["u_upper"],
        lqr_iter=100,
        slew_rate_penalty=slew,
        prev_ctrl=leaves["prev_ctrl"] if slew else None,
        exit_unconverged=False,
    )
    x, u, costs = solver(leaves["x_init"], QuadCost(leaves["C"], leaves["c"]), dx)
    loss = (
        (u * torch.linspace(-1.0, 1.0, u.numel(), dtype=F64).view_as(u)).sum()
        + x.sum()
        + costs.sum()
    )
    names = [k for k in leaves if slew or k != "prev_ctrl"]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    for name, grad in zip(names, grads):
        assert grad is not None, name
        assert grad.shape == leaves[name].shape and grad.is_contiguous(), (name, grad.stride())
        grad.view(-1)  # mpc.pytorch's tests flatten gradients this way


# ------------------------------------------------ lqr_step.LQRStep
def _lqr_steps(problem, C, c, F, f, lower, upper, steps: int, delta_u: float | None = None):
    """mpc.pytorch's outer loop around LQRStep, from zero controls (time-major)."""
    T, B, m = lower.shape
    u = torch.zeros(T, B, m, dtype=F64)
    x = util.get_traj(T, u, problem.x_init, LinDx(F, f))
    for _ in range(steps):
        step = lqr_step.LQRStep(
            3,
            m,
            T,
            lower,
            upper,
            delta_u=delta_u,
            true_cost=QuadCost(C, c),
            true_dynamics=LinDx(F, f),
            current_x=x,
            current_u=u,
        )
        new_x, new_u, qp_count, costs, full_du_norm, mean_alphas = step(problem.x_init, C, c, F, f)
        if delta_u is not None:
            assert float((new_u - u).abs().max()) <= delta_u + 1e-12
        x, u = new_x, new_u
    return x, u, qp_count, costs, full_du_norm, mean_alphas


def test_lqr_step_iterates_to_the_exact_solution() -> None:
    problem, C, c, F, f, lower, upper = _problem()
    x, u, qp_count, costs, full_du_norm, mean_alphas = _lqr_steps(
        problem, C, c, F, f, lower, upper, 30
    )
    x_qp, u_qp, cost_qp = lqr_oracle_batch(problem)
    torch.testing.assert_close(u.transpose(0, 1), u_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(x.transpose(0, 1), x_qp, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(costs, cost_qp, atol=1e-8, rtol=1e-8)
    assert qp_count.shape == (1,) and full_du_norm.shape == (3,) and mean_alphas.dim() == 0
    assert float(full_du_norm.max()) < 1e-8
    _lqr_steps(problem, C, c, F, f, lower, upper, 3, delta_u=0.05)


def test_lqr_step_no_op_forward_has_the_exact_gradient() -> None:
    problem, C, c, F, f, lower, upper = _problem(B=2, n=2, T=3, seed=4)
    x_qp, u_qp, _ = lqr_oracle_batch(problem)
    x_bar, u_bar = x_qp.transpose(0, 1), u_qp.transpose(0, 1)
    c_leaf = c.clone().requires_grad_(True)
    step = lqr_step.LQRStep(
        2, 2, 3, lower, upper, current_x=x_bar, current_u=u_bar, no_op_forward=True
    )
    _x, u = step(problem.x_init, C, c_leaf, F, f)
    torch.testing.assert_close(u, u_bar)
    solutions = [lqr_oracle(problem, b) for b in range(2)]
    at_lower = torch.from_numpy(np.stack([s.at_lower for s in solutions]))
    at_upper = torch.from_numpy(np.stack([s.at_upper for s in solutions]))
    dense_c = problem.c.clone().requires_grad_(True)
    _, u_dense, _ = active_set_lqr(problem._replace(c=dense_c), at_lower, at_upper)
    weights = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    (grad,) = torch.autograd.grad((u * weights).sum(), c_leaf)
    (grad_dense,) = torch.autograd.grad((u_dense.transpose(0, 1) * weights).sum(), dense_c)
    torch.testing.assert_close(grad, grad_dense.transpose(0, 1), atol=1e-9, rtol=1e-9)


def test_lqr_step_arguments() -> None:
    x, u = torch.zeros(3, 1, 2, dtype=F64), torch.zeros(3, 1, 1, dtype=F64)
    with pytest.raises(ValueError, match="delta_space: expected True"):
        lqr_step.LQRStep(2, 1, 3, delta_space=False, current_x=x, current_u=u)
    with pytest.raises(ValueError, match="current_x, current_u: expected the nominal"):
        lqr_step.LQRStep(2, 1, 3)
    with pytest.raises(ValueError, match="delta_u: expected a positive float"):
        lqr_step.LQRStep(2, 1, 3, delta_u=0.0, current_x=x, current_u=u)
    assert lqr_step.LqrForOut._fields == (
        "objs",
        "full_du_norm",
        "alpha_du_norm",
        "mean_alphas",
        "costs",
    )
    assert lqr_step.LqrBackOut._fields == ("n_total_qp_iter",)


def test_lqr_step_matches_mpc_pytorch() -> None:
    reference = _upstream("mpc.lqr_step")
    reference_mpc = _upstream("mpc.mpc")
    problem, C, c, F, f, lower, upper = _problem()
    u = 0.1 * torch.ones(5, 3, 2, dtype=F64)
    x = util.get_traj(5, u, problem.x_init, LinDx(F, f))
    common = {"u_lower": lower, "u_upper": upper, "current_x": x, "current_u": u, "delta_u": 0.3}
    ours = lqr_step.LQRStep(3, 2, 5, true_cost=QuadCost(C, c), true_dynamics=LinDx(F, f), **common)(
        problem.x_init, C, c, F, f
    )
    theirs = reference.LQRStep(
        3,
        2,
        5,
        true_cost=reference_mpc.QuadCost(C, c),
        true_dynamics=reference_mpc.LinDx(F, f),
        **common,
    )(problem.x_init, C, c, F, f)
    for name, a, b in zip(("x", "u", "qp", "costs", "full_du_norm", "mean_alphas"), ours, theirs):
        if name == "full_du_norm":  # mpc.pytorch's view(B, -1) of [T, m, B] mixes the
            a, b = a.square().sum(), b.square().sum()  # elements up; the batch total agrees
        if name != "qp":
            torch.testing.assert_close(a, b.to(a.dtype), atol=1e-6, rtol=1e-6, msg=name)


# ------------------------------------------------ SlewRateCost, approximate_cost, subproblem
def _row_cost(Q: Tensor, p: Tensor):
    return lambda tau: 0.5 * ((tau @ Q) * tau).sum(-1) + tau @ p + (tau**4).sum(-1)


def test_approximate_cost_matches_the_analytic_model() -> None:
    g = torch.Generator().manual_seed(2)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    Q, p = A @ A.T, torch.randn(4, generator=g, dtype=F64)
    x, u = (
        torch.randn(3, 2, 2, generator=g, dtype=F64),
        torch.randn(3, 2, 2, generator=g, dtype=F64),
    )
    H, c, costs = mpc.MPC(2, 2, 3).approximate_cost(x, u, _row_cost(Q, p), diff=False)
    tau = torch.cat([x, u], -1)
    H_exact = Q + torch.diag_embed(12.0 * tau**2)
    torch.testing.assert_close(H, H_exact)
    grad = tau @ Q + p + 4.0 * tau**3
    torch.testing.assert_close(c, grad - (H_exact @ tau.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(costs, _row_cost(Q, p)(tau))


def test_slew_rate_cost_and_subproblem() -> None:
    g = torch.Generator().manual_seed(3)
    P = torch.randn(2, 2, 6, 6, generator=g, dtype=F64)
    tau = torch.randn(2, 6, generator=g, dtype=F64)
    cost = SlewRateCost(lambda t: t.sum(-1), P, 2, 2)
    torch.testing.assert_close(
        cost(tau), tau[:, 2:].sum(-1) + 0.5 * torch.einsum("bi,bij,bj->b", tau, P[0], tau)
    )
    with pytest.raises(NotImplementedError):
        cost.grad_input(tau, tau)
    problem, C, c, F, f, lower, upper = _problem()
    u = torch.zeros(5, 3, 2, dtype=F64)
    x = util.get_traj(5, u, problem.x_init, LinDx(F, f))
    solver = mpc.MPC(3, 2, 5, lower, upper)
    sub = solver.solve_lqr_subproblem(problem.x_init, C, c, F, f, QuadCost(C, c), LinDx(F, f), x, u)
    direct = lqr_step.LQRStep(
        3,
        2,
        5,
        lower,
        upper,
        true_cost=QuadCost(C, c),
        true_dynamics=LinDx(F, f),
        current_x=x,
        current_u=u,
        linesearch_decay=0.2,
        max_linesearch_iter=10,
    )(problem.x_init, C, c, F, f)
    torch.testing.assert_close(sub[1], direct[1])
    with pytest.raises(ValueError, match="slew_rate_penalty: expected None"):
        mpc.MPC(3, 2, 5, slew_rate_penalty=1.0).solve_lqr_subproblem(
            problem.x_init, C, c, F, f, QuadCost(C, c), LinDx(F, f), x, u
        )


def test_slew_rate_cost_and_approximate_cost_match_mpc_pytorch() -> None:
    reference = _upstream("mpc.mpc")
    g = torch.Generator().manual_seed(3)
    P = torch.randn(2, 2, 6, 6, generator=g, dtype=F64)
    tau = torch.randn(2, 6, generator=g, dtype=F64)
    row = lambda t: (t**3).sum(-1)  # noqa: E731
    torch.testing.assert_close(
        SlewRateCost(row, P, 2, 2)(tau), reference.SlewRateCost(row, P, 2, 2)(tau)
    )
    A = torch.randn(4, 4, generator=g, dtype=F64)
    Q, p = A @ A.T, torch.randn(4, generator=g, dtype=F64)
    x, u = (
        torch.randn(3, 2, 2, generator=g, dtype=F64),
        torch.randn(3, 2, 2, generator=g, dtype=F64),
    )
    ours = mpc.MPC(2, 2, 3).approximate_cost(x, u, _row_cost(Q, p), diff=False)
    theirs = reference.MPC(2, 2, 3).approximate_cost(x, u, _row_cost(Q, p), diff=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    _ = GradMethods  # the enum is shared with mpc_policy.compat.mpc
