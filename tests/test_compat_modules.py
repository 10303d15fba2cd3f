"""mpc.pytorch's helper modules in ``mpc_policy.compat``: util, pnqp, torch_numdiff,
dynamics, env_dx, and the ``install()`` alias.

Every public function is checked against an independent oracle (einsum, autograd, the exact
box-QP oracle of tests/oracles.py, the models written out in tests/test_compat.py) and, when
mpc.pytorch itself is importable (the ``bench`` environment, numpy < 2), against it.
"""

from __future__ import annotations

import logging
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import Tensor

import mpc_policy.compat
from mpc_policy.compat import dynamics, pnqp, torch_numdiff, util
from mpc_policy.compat.env_dx import cartpole, pendulum
from mpc_policy.compat.mpc import LinDx, QuadCost
from tests.oracles import random_box_qp, solve_box_qp
from tests.test_compat import CartpoleDx, PendulumDx

F64 = torch.float64


def _upstream(name: str):
    """mpc.pytorch's module ``name``, or a skip where it is not installed."""
    if sys.modules.get("mpc") is mpc_policy.compat:
        pytest.fail("mpc_policy.compat.install() is still active")
    return pytest.importorskip(name)


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------ util
def test_batched_products_match_einsum() -> None:
    x, y, Q = _randn(4, 3, seed=1), _randn(4, 3, seed=2), _randn(4, 3, 3, seed=3)
    torch.testing.assert_close(util.bger(x, y), torch.einsum("bi,bj->bij", x, y))
    torch.testing.assert_close(util.bmv(Q, y), torch.einsum("bij,bj->bi", Q, y))
    torch.testing.assert_close(util.bquad(x, Q), torch.einsum("bi,bij,bj->b", x, Q, x))
    torch.testing.assert_close(util.bdot(x, y), torch.einsum("bi,bi->b", x, y))
    D = util.bdiag(x)
    torch.testing.assert_close(D, torch.stack([torch.diag(r) for r in x]))
    assert util.bdiag(torch.ones(1, 1)).shape == (1, 1, 1)  # mpc.pytorch's crash case
    with pytest.raises(ValueError, match=r"d: expected shape \(B, k\)"):
        util.bdiag(x[0])


def test_batched_products_match_mpc_pytorch() -> None:
    reference = _upstream("mpc.util")
    x, y, Q = _randn(4, 3, seed=1), _randn(4, 3, seed=2), _randn(4, 3, 3, seed=3)
    for name, args in (("bger", (x, y)), ("bmv", (Q, y)), ("bquad", (x, Q)), ("bdot", (x, y))):
        torch.testing.assert_close(getattr(util, name)(*args), getattr(reference, name)(*args))
    expanded, flag = util.expandParam(x, 5, 3)
    ref_expanded, ref_flag = reference.expandParam(x, 5, 3)
    assert flag == ref_flag and torch.equal(expanded, ref_expanded)
    low, high = -0.5 * torch.ones(4, 3, dtype=F64), 0.5
    torch.testing.assert_close(
        util.eclamp(x.clone(), low, high), reference.eclamp(x.clone(), low, high)
    )
    f = lambda v: torch.stack([v.sin().sum(), (v * v).prod()])  # noqa: E731
    torch.testing.assert_close(util.jacobian(f, x[0], 1e-6), reference.jacobian(f, x[0], 1e-6))


def test_eclamp_is_in_place_and_expand_param_forms() -> None:
    x = _randn(4, 3)
    out = util.eclamp(x, -0.5 * torch.ones(4, 3, dtype=F64), 0.25)
    assert out is x and float(x.max()) <= 0.25 and float(x.min()) >= -0.5
    with pytest.raises(ValueError, match=r"lower: expected a float or shape \(4, 3\)"):
        util.eclamp(x, torch.zeros(3), 1.0)
    X, expanded = util.expandParam(torch.ones(3, 3), 2, 3)
    assert expanded and X.shape == (2, 3, 3)
    assert util.expandParam(torch.ones(2, 3, 3), 2, 3)[1] is False
    assert util.expandParam(torch.tensor(1.0), 2, 3)[1] is False
    with pytest.raises(ValueError, match="X: expected 0, 2 or 3 dimensions, received 1"):
        util.expandParam(torch.ones(3), 2, 3)


def test_jacobian_matches_autograd() -> None:
    f = lambda v: torch.stack([v.sin().sum(), (v * v).prod(), v[0] * v[2]])  # noqa: E731
    x = _randn(4)
    expected = torch.autograd.functional.jacobian(f, x)
    torch.testing.assert_close(util.jacobian(f, x, 1e-6), expected, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(
        util.jacobian(f, x.unsqueeze(0), 1e-6), expected, atol=1e-8, rtol=1e-7
    )
    with pytest.raises(ValueError, match=r"x: expected shape \(k,\) or \(1, k\)"):
        util.jacobian(f, _randn(2, 4), 1e-6)


def test_data_helpers() -> None:
    x = _randn(3).requires_grad_()
    for helper in (util.get_data_maybe, util.detach_maybe, util.data_maybe):
        out = helper(x)
        assert not out.requires_grad and out.data_ptr() == x.data_ptr()
    assert util.detach_maybe(None) is None and util.data_maybe(None) is None
    assert util.get_data_maybe(3.0) == 3.0


def test_table_log_writes_a_header_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mpc_policy.compat.util"):
        util.table_log("compat-test", (("iter", 1), ("cost", 2.5, "{:.1e}")))
        util.table_log("compat-test", (("iter", 2), ("cost", 1.5, "{:.1e}")))
    assert [r.getMessage() for r in caplog.records] == [
        "| iter | cost |",
        "| 1 | 2.5e+00 |",
        "| 2 | 1.5e+00 |",
    ]
    with pytest.raises(ValueError, match="d: expected"):
        util.table_log("compat-test", (("iter",),))


def _lindx_problem(T: int = 4, B: int = 3, n: int = 2, m: int = 2):
    F = 0.5 * _randn(T - 1, B, n, n + m, seed=4)
    f = _randn(T - 1, B, n, seed=5)
    A = _randn(T, B, n + m, n + m, seed=6)
    C = A @ A.transpose(-1, -2)
    return (
        _randn(B, n, seed=7),
        _randn(T, B, m, seed=8),
        LinDx(F, f),
        QuadCost(C, _randn(T, B, n + m, seed=9)),
    )


def test_get_traj_and_get_cost_match_a_loop() -> None:
    x_init, u, dx, cost = _lindx_problem()
    T = u.shape[0]
    xs = [x_init]
    for t in range(T - 1):
        xs.append(torch.einsum("bij,bj->bi", dx.F[t], torch.cat([xs[-1], u[t]], -1)) + dx.f[t])
    x = torch.stack(xs)
    torch.testing.assert_close(util.get_traj(T, u, x_init, dx), x)
    module = dynamics.AffineDynamics(dx.F[0, 0, :, :2], dx.F[0, 0, :, 2:], dx.f[0, 0])
    x_module = util.get_traj(T, u, x_init, module)
    assert x_module.shape == x.shape and not x_module.requires_grad
    tau = torch.cat([x, u], -1)
    expected = 0.5 * torch.einsum("tbi,tbij,tbj->b", tau, cost.C, tau) + (tau * cost.c).sum((0, 2))
    torch.testing.assert_close(util.get_cost(T, u, cost, dx, x_init=x_init), expected)
    torch.testing.assert_close(util.get_cost(T, u, cost, x=x), expected)
    row_cost = lambda tau_t: (tau_t * tau_t).sum(-1)  # noqa: E731
    torch.testing.assert_close(util.get_cost(T, u, row_cost, x=x), (tau * tau).sum((0, 2)))
    with pytest.raises(ValueError, match="x: expected x, or x_init and dynamics"):
        util.get_cost(T, u, cost)


def test_get_traj_and_get_cost_match_mpc_pytorch() -> None:
    reference = _upstream("mpc.util")
    reference_mpc = _upstream("mpc.mpc")
    x_init, u, dx, cost = _lindx_problem()
    T = u.shape[0]
    ref_dx = reference_mpc.LinDx(dx.F, dx.f)
    torch.testing.assert_close(
        util.get_traj(T, u, x_init, dx), reference.get_traj(T, u, x_init, ref_dx)
    )
    ref_cost = reference_mpc.QuadCost(cost.C, cost.c)
    torch.testing.assert_close(
        util.get_cost(T, u, cost, dx, x_init=x_init),
        reference.get_cost(T, u, ref_cost, ref_dx, x_init=x_init),
    )


# ------------------------------------------------ pnqp
@pytest.mark.parametrize("k", [1, 6])
def test_pnqp_matches_the_exact_box_qp(k: int) -> None:
    if k == 1:  # half the elements at a bound
        H, q, _, _ = random_box_qp(4, k, seed=11, bounded_fraction=None)
        reach = (q / H[:, 0]).abs() * torch.tensor([[0.5], [2.0], [0.5], [2.0]], dtype=F64)
        lower, upper = -reach, reach
    else:
        H, q, lower, upper = random_box_qp(4, k, seed=11 + k)
    x, factor, free, last = pnqp.pnqp(H, q, lower, upper)
    for b in range(4):
        exact = solve_box_qp(H[b].numpy(), q[b].numpy(), lower[b].numpy(), upper[b].numpy())
        np.testing.assert_allclose(x[b].numpy(), exact.x, atol=1e-9)
        np.testing.assert_array_equal(free[b].numpy() == 0.0, exact.at_lower | exact.at_upper)
    assert free.dtype == F64 and isinstance(last, int)
    masked = torch.where((free.unsqueeze(-1) * free.unsqueeze(-2)).bool(), H, 0.0)
    if k == 1:
        assert isinstance(factor, Tensor) and factor.shape == (4, 1, 1)
        torch.testing.assert_close(factor, masked + 1e-11)
    else:
        LU, pivots = factor
        P, L, U = torch.lu_unpack(LU, pivots)
        torch.testing.assert_close(P @ L @ U, masked + 1e-11 * torch.eye(k, dtype=F64))
    with pytest.raises(ValueError, match=r"q: expected shape \(B, k\)"):
        pnqp.pnqp(H, q[0], lower, upper)


def test_pnqp_floats_warm_start_and_nonconvergence() -> None:
    H, q, _, _ = random_box_qp(3, 4, seed=3, bounded_fraction=None)
    x, *_ = pnqp.pnqp(H, q, -0.1, 0.1)
    x_warm, *_ = pnqp.pnqp(H, q, -0.1, 0.1, x_init=x)
    torch.testing.assert_close(x_warm, x)
    assert float(x.abs().max()) <= 0.1
    hard_H = torch.diag_embed(torch.logspace(-6, 6, 8, dtype=F64)).expand(2, 8, 8)
    with pytest.warns(RuntimeWarning, match="pnqp: elements"):
        pnqp.pnqp(hard_H, torch.ones(2, 8, dtype=F64), -1.0, 1.0, n_iter=1)


def test_pnqp_matches_mpc_pytorch() -> None:
    reference = _upstream("mpc.pnqp")
    H, q, lower, upper = random_box_qp(3, 5, seed=21)
    ours, _, free, _ = pnqp.pnqp(H, q, lower, upper)
    theirs, _, their_free, _ = reference.pnqp(H, q, lower, upper)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(free, their_free.to(F64))


# ------------------------------------------------ torch_numdiff
def _net(z: Tensor) -> Tensor:
    return torch.stack([torch.sin(z).sum(-1), (z**3).sum(-1)], dim=-1)


def test_numdiff_matches_autograd() -> None:
    x = _randn(3, 4)
    scalar = lambda z: _net(z)[:, 0]  # noqa: E731
    rows = [torch.autograd.functional.jacobian(lambda v: _net(v.unsqueeze(0))[0], r) for r in x]
    torch.testing.assert_close(
        torch_numdiff.grad(_net, x, 1e-5), torch.stack(rows).transpose(1, 2), atol=1e-8, rtol=1e-6
    )
    g = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: scalar(v.unsqueeze(0))[0], r) for r in x]
    )
    torch.testing.assert_close(torch_numdiff.grad(scalar, x, 1e-5), g, atol=1e-8, rtol=1e-6)
    h = torch.stack(
        [torch.autograd.functional.hessian(lambda v: scalar(v.unsqueeze(0))[0], r) for r in x]
    )
    torch.testing.assert_close(torch_numdiff.hess(scalar, x, 1e-4), h, atol=1e-5, rtol=1e-5)
    assert torch_numdiff.hess(_net, x).shape == (3, 4, 4, 2)
    with pytest.raises(ValueError, match=r"inputs: expected shape \(N, k\)"):
        torch_numdiff.grad(_net, x[0])


def test_numdiff_matches_mpc_pytorch() -> None:
    reference = _upstream("mpc.torch_numdiff")
    x = _randn(3, 4)
    scalar = lambda z: _net(z)[:, 0]  # noqa: E731
    torch.testing.assert_close(torch_numdiff.grad(_net, x), reference.grad(_net, x))
    torch.testing.assert_close(torch_numdiff.hess(scalar, x), reference.hess(scalar, x))


# ------------------------------------------------ dynamics
def _autograd_blocks(module, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """R [N, n, n], S [N, n, m] of a row-wise module by autograd, one row at a time."""
    Rs, Ss = [], []
    for xi, ui in zip(x, u):
        R, S = torch.autograd.functional.jacobian(
            lambda a, b: module(a.unsqueeze(0), b.unsqueeze(0))[0], (xi, ui)
        )
        Rs.append(R)
        Ss.append(S)
    return torch.stack(Rs), torch.stack(Ss)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "elu"])
@pytest.mark.parametrize("passthrough", [True, False])
def test_nn_dynamics_grad_input_matches_autograd(activation: str, passthrough: bool) -> None:
    torch.manual_seed(0)
    net = dynamics.NNDynamics(3, 2, [7, 5], activation, passthrough).double()
    x, u = _randn(4, 3, seed=1), _randn(4, 2, seed=2)
    out = net(x, u)
    assert out.shape == (4, 3) and len(net.zs) == 2 and len(net.Ws) == 3
    R, S = net.grad_input(x, u)
    R_ref, S_ref = _autograd_blocks(net, x, u)
    torch.testing.assert_close(R, R_ref)
    torch.testing.assert_close(S, S_ref)
    torch.testing.assert_close(net(x[0], u[0]), out[0])  # vectors work too
    assert R.requires_grad  # the Jacobian keeps the graph to the weights
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x, u), out)
    with pytest.raises(ValueError, match="activation: expected one of"):
        dynamics.NNDynamics(3, 2, activation="tanh")


def test_affine_and_passthrough_dynamics() -> None:
    A, B, c = _randn(3, 3, seed=1), _randn(3, 2, seed=2), _randn(3, seed=3)
    affine = dynamics.AffineDynamics(A, B, c)
    x, u = _randn(4, 3, seed=4), _randn(4, 2, seed=5)
    torch.testing.assert_close(affine(x, u), x @ A.T + u @ B.T + c)
    R, S = affine.grad_input(x, u)
    assert R.shape == (4, 3, 3) and torch.equal(R[2], A) and torch.equal(S[1], B)
    with pytest.raises(ValueError, match="A: expected a tensor with 2 dimensions"):
        dynamics.AffineDynamics(A[0], B)
    slew = dynamics.CtrlPassthroughDynamics(affine)
    tilde_x = torch.cat([_randn(4, 2, seed=6), x], -1)
    torch.testing.assert_close(slew(tilde_x, u), torch.cat([u, affine(x, u)], -1))
    R, S = slew.grad_input(tilde_x, u)
    R_ref, S_ref = _autograd_blocks(slew, tilde_x, u)
    torch.testing.assert_close(R, R_ref)
    torch.testing.assert_close(S, S_ref)
    with pytest.raises(TypeError, match="grad_input"):
        dynamics.CtrlPassthroughDynamics(PendulumDx(torch.ones(3))).grad_input(x, u[:, :1])


def test_dynamics_match_mpc_pytorch() -> None:
    reference = _upstream("mpc.dynamics")
    for activation in ("sigmoid", "relu"):
        torch.manual_seed(3)
        ours = dynamics.NNDynamics(3, 2, [6], activation).double()
        torch.manual_seed(3)
        theirs = reference.NNDynamics(3, 2, [6], activation).double()
        x, u = _randn(4, 3, seed=1), _randn(4, 2, seed=2)
        torch.testing.assert_close(ours(x, u), theirs(x, u))  # same weights from the same seed
        for mine, upstream in zip(ours.grad_input(x, u), theirs.grad_input(x, u)):
            torch.testing.assert_close(mine, upstream)
    A, B = _randn(3, 3, seed=1), _randn(3, 2, seed=2)
    x, u = _randn(4, 3, seed=4), _randn(4, 2, seed=5)
    torch.testing.assert_close(
        dynamics.AffineDynamics(A, B)(x, u), reference.AffineDynamics(A, B)(x, u)
    )


# ------------------------------------------------ env_dx
def test_env_dx_models_match_the_written_out_models() -> None:
    x = torch.tensor([[0.8, 0.6, -0.5], [1.0, 0.0, 2.0]], dtype=F64)
    u = torch.tensor([[1.5], [-3.0]], dtype=F64)
    model = pendulum.PendulumDx()
    torch.testing.assert_close(
        model(x, u), PendulumDx(torch.tensor([10.0, 1.0, 1.0], dtype=F64))(x, u)
    )
    torch.testing.assert_close(model(x[0], u[0]), model(x, u)[0])
    biased = pendulum.PendulumDx(torch.tensor([10.0, 1.0, 1.0, 0.3, 0.2], dtype=F64), simple=False)
    theta = torch.atan2(x[:, 1], x[:, 0])
    speed = x[:, 2] + 0.05 * (
        15.0 * torch.sin(theta + 0.2) + 3.0 * u[:, 0].clamp(-2, 2) - 0.3 * theta
    )
    torch.testing.assert_close(biased(x, u)[:, 2], speed)
    state = torch.tensor([[0.1, -0.2, 0.8, 0.6, 0.3]], dtype=F64)
    force = torch.tensor([[20.0]], dtype=F64)
    torch.testing.assert_close(
        cartpole.CartpoleDx()(state, force), CartpoleDx()(state, force), rtol=1e-6, atol=1e-6
    )
    q, p = cartpole.CartpoleDx().get_true_obj()
    q_ref, p_ref = CartpoleDx().get_true_obj()
    torch.testing.assert_close(q.double(), q_ref)
    torch.testing.assert_close(p.double(), p_ref)
    with pytest.raises(ValueError, match=r"params: expected shape \(5,\)"):
        pendulum.PendulumDx(torch.ones(3), simple=False)


def test_env_dx_frames() -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    fig, ax = pendulum.PendulumDx().get_frame(torch.tensor([0.0, 1.0, 0.0]))
    assert ax.get_xlim() == (-1.2, 1.2)
    plt.close(fig)
    fig, ax = cartpole.CartpoleDx().get_frame(torch.tensor([0.2, 0.0, 1.0, 0.0, 0.0]))
    plt.close(fig)


def test_env_dx_match_mpc_pytorch() -> None:
    reference_pendulum = _upstream("mpc.env_dx.pendulum")
    reference_cartpole = _upstream("mpc.env_dx.cartpole")
    x, u = torch.tensor([[0.8, 0.6, -0.5]]), torch.tensor([[1.5]])
    torch.testing.assert_close(pendulum.PendulumDx()(x, u), reference_pendulum.PendulumDx()(x, u))
    params = torch.tensor([9.0, 1.2, 0.9, 0.1, 0.05])
    torch.testing.assert_close(
        pendulum.PendulumDx(params, simple=False)(x, u),
        reference_pendulum.PendulumDx(params, simple=False)(x, u),
    )
    state, force = torch.tensor([[0.1, -0.2, 0.8, 0.6, 0.3]]), torch.tensor([[20.0]])
    torch.testing.assert_close(
        cartpole.CartpoleDx()(state, force), reference_cartpole.CartpoleDx()(state, force)
    )
    for ours, theirs in (
        (pendulum.PendulumDx(), reference_pendulum.PendulumDx()),
        (cartpole.CartpoleDx(), reference_cartpole.CartpoleDx()),
    ):
        for mine, upstream in zip(ours.get_true_obj(), theirs.get_true_obj()):
            torch.testing.assert_close(mine, upstream)
        for name in ("lower", "upper", "mpc_eps", "linesearch_decay", "max_linesearch_iter", "dt"):
            assert getattr(ours, name) == getattr(theirs, name), name


# ------------------------------------------------ install()
def test_install_aliases_every_module_and_uninstall_restores() -> None:
    before = {name: sys.modules.get(name) for name in mpc_policy.compat.alias.ALIASES}
    try:
        mpc_policy.compat.install()
        mpc_policy.compat.install()  # twice is harmless
        import mpc  # type: ignore[import-not-found]
        from mpc import mpc as solver  # type: ignore[import-not-found]
        from mpc import pnqp as qp  # type: ignore[import-not-found]
        from mpc.dynamics import NNDynamics  # type: ignore[import-not-found]
        from mpc.env_dx import pendulum as pendulum_module  # type: ignore[import-not-found]

        assert mpc is mpc_policy.compat and solver is mpc_policy.compat.mpc
        assert qp is pnqp and NNDynamics is dynamics.NNDynamics and pendulum_module is pendulum
    finally:
        mpc_policy.compat.uninstall()
    assert {name: sys.modules.get(name) for name in before} == before
