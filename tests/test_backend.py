"""The compiled backend against the torch reference, layer by layer and end to end.

Each compiled kernel (``mpc_policy.numerics.compiled``) is checked against the torch function it
replaces on the problem families of the LQR and MPC tests: bounded and unbounded, m = 1 and
m > 1, indefinite Q_uu, one-sided bounds, elements that box-DDP leaves stalled, B = 1 and
B = 256; float64 to 1e-10 with identical iteration counts and free sets, float32 to 1e-5
relative. Then the selection rules: the option, the environment variable, the report in
``info``, the torch path for graphs and for unavailable numba.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import pytest
import torch
from torch import Tensor

from mpc_policy import MPC, GoalWeightedCost, lqr_solve
from mpc_policy._warnings import warn_regularized
from mpc_policy.solve import backend as backend_module
from mpc_policy.solve.backend import TORCH, select
from tests.oracles import BoxLQRProblem, random_box_lqr, random_box_qp
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

pytest.importorskip("numba")
compiled_box_qp = importlib.import_module("mpc_policy.numerics.compiled.box_qp")
compiled_riccati = importlib.import_module("mpc_policy.numerics.compiled.riccati")
compiled_adjoint = importlib.import_module("mpc_policy.numerics.compiled.adjoint")
compiled_rollout = importlib.import_module("mpc_policy.numerics.compiled.rollout")
torch_box_qp = importlib.import_module("mpc_policy.numerics.box_qp")
torch_riccati = importlib.import_module("mpc_policy.numerics.riccati")
torch_adjoint = importlib.import_module("mpc_policy.numerics.adjoint")
rollouts = importlib.import_module("mpc_policy.solve.rollout")
lqr_module = importlib.import_module("mpc_policy.lqr")

F64 = torch.float64


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-10, "rtol": 1e-10} if dtype == F64 else {"atol": 1e-5, "rtol": 1e-5}


def _close(a: Tensor, b: Tensor, dtype: torch.dtype) -> None:
    """Equal up to the dtype's tolerance, relative to b's scale."""
    scale = 1.0 + (b.abs().max() if b.numel() else 0.0)
    torch.testing.assert_close(a / scale, b / scale, **_tolerance(dtype))


def _riccati_data(T: int, B: int, n: int, m: int, seed: int, dtype: torch.dtype, indefinite=False):
    g = torch.Generator().manual_seed(seed)
    d = n + m
    A = torch.randn(T, B, d, d, generator=g, dtype=F64)
    C = A @ A.transpose(-1, -2) + 0.01 * torch.eye(d, dtype=F64)
    if indefinite:
        C[..., n:, n:] -= 4.0 * torch.eye(m, dtype=F64)
    grad = torch.randn(T, B, d, generator=g, dtype=F64)
    F = 0.5 * torch.randn(T - 1, B, n, d, generator=g, dtype=F64)
    lower = -0.3 * torch.rand(T, B, m, generator=g, dtype=F64)
    upper = 0.3 * torch.rand(T, B, m, generator=g, dtype=F64)
    return tuple(z.to(dtype) for z in (C, grad, F, lower, upper))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("hard", [0.0, 0.5])
def test_box_qp_kernel_equals_torch(dtype: torch.dtype, m: int, hard: float) -> None:
    share = (0.3, 0.6) if m > 1 else (0.0, 1.0)
    data = random_box_qp(64, m, seed=m, bounded_fraction=share, hard_fraction=hard)
    Q, q, lower, upper = (z.to(dtype) for z in data)
    ours = compiled_box_qp.box_qp(Q, q, lower, upper)
    reference = torch_box_qp.box_qp(Q, q, lower, upper)
    _close(ours.x, reference.x, dtype)
    _close(ours.chol, reference.chol, dtype)
    assert torch.equal(ours.free, reference.free)
    assert torch.equal(ours.converged, reference.converged)
    if dtype == F64:
        assert torch.equal(ours.iterations, reference.iterations)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("T", "B", "n", "m"), [(6, 32, 3, 2), (5, 16, 2, 1), (1, 8, 3, 3)])
@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("indefinite", [False, True])
def test_recursion_and_factorization_kernels_equal_torch(
    dtype: torch.dtype, T: int, B: int, n: int, m: int, bounded: bool, indefinite: bool
) -> None:
    C, grad, F, lower, upper = _riccati_data(
        T, B, n, m, seed=T + m, dtype=dtype, indefinite=indefinite
    )
    bounds = (lower, upper) if bounded else (None, None)
    ours = compiled_riccati.backward_recursion(C, grad, F, *bounds)
    reference = torch_riccati.backward_recursion(C, grad, F, *bounds)
    if indefinite and dtype == torch.float32:
        pytest.skip(
            "float32 with an indefinite Q_uu: the two Cholesky codes may succeed at different "
            "shifts (the kernel accumulates in float64), leaving nearly singular, different "
            "Q_uu; the float64 case checks the regularization"
        )
    for name, a, b in zip(reference._fields, ours, reference):
        if name == "free":
            assert torch.equal(a, b)
        else:
            _close(a, b, dtype)
    ours_f = compiled_riccati.factorize(C, F, reference.free)
    reference_f = torch_riccati.factorize(C, F, reference.free)
    for name, a, b in zip(reference_f._fields, ours_f, reference_f):
        if name == "free":
            assert torch.equal(a, b)
        else:
            _close(a, b, dtype)
    dtau_grad = torch.randn(T, B, n + m, dtype=dtype, generator=torch.Generator().manual_seed(1))
    _close(
        compiled_adjoint.adjoint_solve(reference, F, dtau_grad),
        torch_adjoint.adjoint_solve(reference, F, dtau_grad),
        dtype,
    )
    _close(
        compiled_adjoint.costates_from_gradient(dtau_grad, F),
        torch_adjoint.costates_from_gradient(dtau_grad, F),
        dtype,
    )
    tau = torch.randn(T, B, n + m, dtype=dtype, generator=torch.Generator().manual_seed(2))
    for need in ((True, True, True), (False, False, False), (True, False, True)):
        ours_g = compiled_adjoint.implicit_gradients(reference, C, grad, F, tau, dtau_grad, *need)
        reference_g = torch_adjoint.implicit_gradients(reference, C, grad, F, tau, dtau_grad, *need)
        for a, b in zip(ours_g, reference_g):
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                _close(a, b, dtype)


@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize("indefinite", [False, True])
def test_recursion_with_compiled_in_sizes_equals_run_time_sizes(
    bounded: bool, indefinite: bool
) -> None:
    # the compiled box-DDP loop passes the pendulum's n = 3, m = 1 as constants (literals)
    # to the recursion: the same code, compiled with known loop lengths, the same bits
    numba = pytest.importorskip("numba")
    T, B, n, m = 7, 24, 3, 1
    C, grad, F, lower, upper = _riccati_data(T, B, n, m, seed=11, dtype=F64, indefinite=indefinite)
    if not bounded:
        lower, upper = torch.full_like(lower, -torch.inf), torch.full_like(upper, torch.inf)
    reference = compiled_riccati.backward_recursion(C, grad, F, lower, upper)
    element = compiled_riccati._recursion_element
    qp_tol = float(torch.finfo(F64).eps ** 0.5)

    @numba.njit
    def constant_sizes(C, g, F, lower, upper, K, k, free, chol, Q, shift):
        scratch = compiled_riccati.recursion_scratch(3, 1, g.dtype)
        for b in range(g.shape[1]):
            element(
                C, g, F, lower, upper, True, b, 1e-8, 30, qp_tol, K, k, free, chol, Q,
                shift, scratch, 3, 1,
            )  # fmt: skip

    gains = [torch.zeros_like(z) for z in reference]
    constant_sizes(*(z.numpy() for z in (C, grad, F, lower, upper, *gains)))
    assert (~reference.free).any() == bounded
    assert (reference.shift > 0).any() == indefinite
    for name, ours, theirs in zip(reference._fields, gains, reference):
        assert torch.equal(ours, theirs), name


def test_recursion_of_active_elements_only_keeps_the_others() -> None:
    C, grad, F, lower, upper = _riccati_data(5, 12, 3, 2, seed=3, dtype=F64)
    first = compiled_riccati.backward_recursion(C, grad, F, lower, upper)
    kept = [z.clone() for z in first]
    active = torch.arange(12) % 3 == 0
    updated = compiled_riccati.backward_recursion(
        C, 2.0 * grad, F, lower, upper, active=active, out=first
    )
    fresh = torch_riccati.backward_recursion(C, 2.0 * grad, F, lower, upper)
    for old, new, full in zip(kept, updated, fresh):
        assert torch.equal(new[:, ~active], old[:, ~active])
        torch.testing.assert_close(
            new[:, active].double(), full[:, active].double(), atol=1e-10, rtol=1e-10
        )


def test_regularization_warnings_are_the_same() -> None:
    """Both recursions report the same shifts (the kernels do not warn: the layers above
    warn about them), so the warnings said of them are the same."""
    C, grad, F, lower, upper = _riccati_data(4, 6, 2, 2, seed=5, dtype=F64, indefinite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kernel that warned would fail here
        shifts = [
            recursion(C, grad, F, lower, upper).shift
            for recursion in (compiled_riccati.backward_recursion, torch_riccati.backward_recursion)
        ]
    said = []
    for shift in shifts:
        with pytest.warns(RuntimeWarning) as caught:
            warn_regularized(shift, None)
        said.append([str(w.message) for w in caught])
    assert said[0] == said[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_affine_rollout_kernel_equals_torch(dtype: torch.dtype) -> None:
    problem = random_box_lqr(16, 3, 2, 6, seed=2, calibrate=False)
    x_init, C, c, F, f, lower, upper = (None if z is None else z.to(dtype) for z in problem)
    Ct, ct, Ft, ft = (z.transpose(0, 1).contiguous() for z in (C, c, F, f))
    lo = lower.transpose(0, 1).contiguous().expand(6, 16, 2).contiguous()
    hi = upper.transpose(0, 1).contiguous().expand(6, 16, 2).contiguous()
    model = lqr_module.QuadraticModel(Ct, ct, Ft, ft)
    u_bar = 0.1 * torch.randn(6, 16, 2, dtype=dtype)
    x_bar, _ = rollouts.rollout(model, x_init, u_bar)
    gains = torch_riccati.backward_recursion(Ct, ct, Ft, lo - u_bar, hi - u_bar)
    kernels = select("compiled", x_init.device)
    alphas = torch.tensor([1.0, 0.3, 0.09], dtype=dtype)
    ours = rollouts.rollout(model, x_init, u_bar, x_bar, gains, alphas, lo, hi, kernels)
    reference = rollouts.rollout(model, x_init, u_bar, x_bar, gains, alphas, lo, hi, TORCH)
    for a, b in zip(ours, reference):
        _close(a, b, dtype)


_FAMILIES = {
    # the seeds and sizes of tests/test_lqr.py, whose oracle calibration they pass
    "bounded_m2": lambda: random_box_lqr(8, 3, 2, 6, seed=16, hard_fraction=0.25),
    "bounded_m1": lambda: random_box_lqr(8, 2, 1, 5, seed=15, hard_fraction=0.25),
    "unbounded": lambda: random_box_lqr(8, 3, 2, 6, seed=16, bounded_fraction=None),
    "hard_mixed_256": lambda: random_box_lqr(
        256, 3, 2, 8, seed=40, hard_fraction=0.5, calibrate=False
    ),
    "batch_1": lambda: random_box_lqr(1, 2, 1, 5, seed=14, calibrate=False),
}


@functools.cache
def _family(name: str) -> BoxLQRProblem:
    return _FAMILIES[name]()


def _one_sided(problem: BoxLQRProblem) -> BoxLQRProblem:
    return problem._replace(u_upper=None)


@pytest.mark.parametrize(
    "family", ["bounded_m2", "bounded_m1", "unbounded", "hard_mixed_256", "batch_1", "one_sided"]
)
def test_lqr_solve_compiled_equals_torch_with_gradients(family: str) -> None:
    problem = _one_sided(_family("bounded_m2")) if family == "one_sided" else _family(family)
    results = {}
    for name in ("compiled", "torch"):
        leaves = [None if z is None else z.clone().requires_grad_(True) for z in problem]
        solution = lqr_solve(*leaves, backend=name, on_unconverged="ignore")
        weights = torch.linspace(-1.0, 1.0, solution.u.numel(), dtype=F64).view_as(solution.u)
        ((solution.u * weights).sum() + solution.x.square().sum()).backward()
        grads = [None if z is None or z.grad is None else z.grad for z in leaves]
        results[name] = (solution, grads)
        assert solution.info.backend == name
    (ours, ours_grads), (reference, reference_grads) = results["compiled"], results["torch"]
    torch.testing.assert_close(ours.u, reference.u, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours.x, reference.x, atol=1e-10, rtol=1e-10)
    assert torch.equal(ours.info.iterations, reference.info.iterations)
    assert torch.equal(ours.info.converged, reference.info.converged)
    # A control that lands within rounding of a bound without being projected onto it is a
    # tie: free and clamped are both right, and each gives its own one-sided derivative. The
    # backends break such ties by their own rounding: compare the other elements only.
    tied = _tied_to_a_bound(reference.u, problem.u_lower, problem.u_upper)
    assert int(tied.sum()) <= max(1, tied.numel() // 100)
    for a, b in zip(ours_grads, reference_grads):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            torch.testing.assert_close(a[~tied], b[~tied], atol=1e-9, rtol=1e-9)


def _tied_to_a_bound(u: Tensor, lower: Tensor | None, upper: Tensor | None) -> Tensor:
    """(B,) elements with a control u (B, T, m) within rounding of a bound (B, T, m) but not
    on it."""
    tied = torch.zeros(u.shape[0], dtype=torch.bool)
    for bound in (lower, upper):
        if bound is not None:
            gap = (u - bound).abs()
            near = (gap > 0) & (gap <= 1e-12 * (1.0 + bound.abs()))
            tied |= near.flatten(1).any(1)
    return tied


def test_lqr_solve_float32_compiled_is_close_to_torch() -> None:
    problem = BoxLQRProblem(*(z.float() for z in _family("hard_mixed_256")))
    ours = lqr_solve(*problem, backend="compiled", on_unconverged="ignore")
    reference = lqr_solve(*problem, backend="torch", on_unconverged="ignore")
    assert ours.info.all_converged and reference.info.all_converged
    _close(ours.u, reference.u, torch.float32)
    _close(ours.x, reference.x, torch.float32)


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("grad_method", ["exact", "paper"])
def test_mpc_pendulum_compiled_equals_torch(batch: int, grad_method: str) -> None:
    dynamics = PendulumDynamics()
    results = {}
    for name in ("compiled", "torch"):
        mpc = MPC(3, 1, 10, u_lower=-2.0, u_upper=2.0, backend=name, grad_method=grad_method)
        cost = pendulum_cost()
        x_init = start_states(batch, seed=3).requires_grad_(True)
        solution = mpc(x_init, cost, dynamics)
        solution.u.sum().backward()
        grads = [x_init.grad] + [p.grad for p in (*cost.parameters(), *dynamics.parameters())]
        dynamics.zero_grad()
        results[name] = (solution, grads)
        assert solution.info.backend == name
    (ours, ours_grads), (reference, reference_grads) = results["compiled"], results["torch"]
    torch.testing.assert_close(ours.u, reference.u, atol=1e-10, rtol=1e-10)
    assert torch.equal(ours.info.iterations, reference.info.iterations)
    assert torch.equal(ours.info.converged, reference.info.converged)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_compiled_mpc_batch_elements_are_independent() -> None:
    dynamics, cost = PendulumDynamics(), pendulum_cost()
    mpc = MPC(3, 1, 10, u_lower=-2.0, u_upper=2.0, backend="compiled")
    x_init = start_states(64, seed=8)
    with torch.no_grad():
        batch = mpc(x_init, cost, dynamics)
        for b in (0, 17, 63):
            alone = mpc(x_init[b : b + 1], cost, dynamics)
            torch.testing.assert_close(batch.u[b : b + 1], alone.u, atol=1e-10, rtol=1e-10)
            assert torch.equal(batch.info.iterations[b : b + 1], alone.info.iterations)


def test_unroll_runs_the_torch_kernels() -> None:
    mpc = MPC(3, 1, 5, u_lower=-2.0, u_upper=2.0, grad_method="unroll", backend="compiled")
    x_init = start_states(2, seed=1).requires_grad_(True)
    solution = mpc(x_init, pendulum_cost(), PendulumDynamics())
    assert solution.info.backend == "torch"
    solution.u.sum().backward()
    assert x_init.grad is not None


def test_environment_variable_selects_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _family("batch_1")
    monkeypatch.setenv("MPC_POLICY_BACKEND", "torch")
    assert lqr_solve(*problem).info.backend == "torch"
    monkeypatch.setenv("MPC_POLICY_BACKEND", "compiled")
    assert lqr_solve(*problem).info.backend == "compiled"
    # an explicit option wins over the environment
    assert lqr_solve(*problem, backend="torch").info.backend == "torch"
    monkeypatch.setenv("MPC_POLICY_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"MPC_POLICY_BACKEND.*'fast'"):
        lqr_solve(*problem)


def test_bad_backend_option_names_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"backend: expected one of \('auto', 'compiled', 'torch'\)"
    ):
        MPC(3, 1, 5, backend="numba")


def test_without_numba_auto_falls_back_and_compiled_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backend_module, "_compiled", lambda: None)
    monkeypatch.delenv("MPC_POLICY_BACKEND", raising=False)
    problem = _family("batch_1")
    assert lqr_solve(*problem).info.backend == "torch"
    with pytest.raises(RuntimeError, match="needs numba"):
        lqr_solve(*problem, backend="compiled")


def test_compiled_on_a_non_cpu_device_is_refused() -> None:
    with pytest.raises(ValueError, match="runs on CPU tensors"):
        select("compiled", torch.device("meta"))
    assert select("auto", torch.device("meta")) is TORCH


def test_goal_weighted_cost_float32_compiled_is_close_to_torch() -> None:
    dynamics = PendulumDynamics().float()
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    )
    x_init = start_states(32, seed=2, dtype=torch.float32)
    out = {}
    for name in ("compiled", "torch"):
        mpc = MPC(3, 1, 10, u_lower=-2.0, u_upper=2.0, backend=name)
        with torch.no_grad():
            out[name] = mpc(x_init, cost, dynamics)
    _close(out["compiled"].u, out["torch"].u, torch.float32)


@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_solving_the_moving_elements_alone_changes_no_answer(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once half the batch has stopped, box-DDP goes on with the moving elements alone
    (``Model.restrict``): values, iteration counts and gradients equal the whole-batch loop."""
    module_model = importlib.import_module("mpc_policy.problem.module_model")
    dynamics = PendulumDynamics()
    restrict = module_model.ModuleModel.restrict
    calls: list[int] = []

    def counting(self, rows, batch):
        calls.append(int(rows.numel()))
        return restrict(self, rows, batch)

    results = {}
    for compact in (True, False):
        monkeypatch.setattr(
            module_model.ModuleModel, "restrict", counting if compact else lambda *a: None
        )
        mpc = MPC(3, 1, 10, u_lower=-2.0, u_upper=2.0, backend=backend)
        cost = pendulum_cost()
        x_init = start_states(64, seed=11).requires_grad_(True)
        solution = mpc(x_init, cost, dynamics)
        solution.u.sum().backward()
        results[compact] = (solution, x_init.grad, dynamics.m.grad.clone())
        dynamics.zero_grad()
    # restrict also tiles the batch for the line-search candidates' costs (L B rows); the
    # run without it costs them one candidate at a time, so the comparison covers that too
    parts = [rows for rows in calls if rows < 64]
    assert parts and max(parts) <= 32, "the solve should have gone on with a part of the batch"
    assert max(calls) > 64, "the candidates' costs should have been taken in one call"
    (ours, ours_dx, ours_dm), (whole, whole_dx, whole_dm) = results[True], results[False]
    torch.testing.assert_close(ours.u, whole.u, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours.x, whole.x, atol=1e-10, rtol=1e-10)
    assert torch.equal(ours.info.iterations, whole.info.iterations)
    assert torch.equal(ours.info.codes, whole.info.codes)
    assert torch.equal(ours.info.step_size, whole.info.step_size)
    torch.testing.assert_close(ours_dx, whole_dx, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ours_dm, whole_dm, atol=1e-9, rtol=1e-9)


def test_a_module_holding_per_element_data_is_not_restricted() -> None:
    restriction = importlib.import_module("mpc_policy.problem.restriction")

    class PerElement(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(8, 1))

    rows = torch.tensor([0, 3])
    assert restriction.restrictable(PerElement(), 8, rows) is None
    shared = PendulumDynamics()
    assert restriction.restrictable(shared, 8, rows) is shared


def test_a_lone_element_with_per_element_data_is_not_tiled() -> None:
    """The line search tiles a batch for its candidates (rows repeated): a module of B = 1
    holding a (1, ...) tensor may hold that element's data, and is then not tiled."""
    restriction = importlib.import_module("mpc_policy.problem.restriction")

    class PerElement(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(1, 1))

    tiled = torch.zeros(10, dtype=torch.long)
    assert restriction.restrictable(PerElement(), 1, tiled) is None
    assert restriction.restrictable(PerElement(), 1, torch.zeros(1, dtype=torch.long)) is not None


@pytest.mark.parametrize("backend", ["compiled", "torch"])
def test_a_regularization_warning_points_at_the_users_call(backend: str) -> None:
    """The warning of an indefinite Q_uu names the caller's line, not a solver module."""
    C, g, F, _, _ = _riccati_data(5, 4, 3, 2, seed=3, dtype=F64, indefinite=True)
    x_init = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    C, c, F = C.transpose(0, 1), g.transpose(0, 1), F.transpose(0, 1)
    f = torch.zeros(4, 4, 3, dtype=F64)
    with pytest.warns(RuntimeWarning, match="not positive definite") as caught:
        lqr_solve(x_init, C, c, F, f, -1.0, 1.0, backend=backend, on_unconverged="ignore")
    regularized = [w for w in caught if "not positive definite" in str(w.message)]
    assert {w.filename for w in regularized} == {__file__}
