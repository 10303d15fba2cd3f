"""Box-LQR layer: forward against the condensed dense oracle (scipy BVLS), gradcheck on
interior and active-bound problems, implicit gradients against autograd through the dense
active-set KKT solve, batch independence, float32, bound forms, broadcasting, the batch-1
single-control backward, and the input checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor

from mpc_policy import lqr_solve
from tests.oracles import (
    BoxLQRProblem,
    active_set_lqr,
    lqr_margin,
    lqr_oracle,
    lqr_oracle_batch,
    random_box_lqr,
)

F64 = torch.float64
INPUTS = ("x_init", "C", "c", "F", "f", "u_lower", "u_upper")


def _solve(problem: BoxLQRProblem, **options):
    return lqr_solve(*problem, **options)


def _active_masks(problem: BoxLQRProblem) -> tuple[Tensor, Tensor]:
    solutions = [lqr_oracle(problem, b) for b in range(problem.x_init.shape[0])]
    at_lower = torch.from_numpy(np.stack([s.at_lower for s in solutions]))
    at_upper = torch.from_numpy(np.stack([s.at_upper for s in solutions]))
    return at_lower, at_upper


def _share(n_ctrl: int, horizon: int) -> tuple[float, float]:
    # with fewer than 3 controls in all, no share lies in [0.3, 0.6] for every element
    return (0.3, 0.6) if n_ctrl * horizon >= 3 else (0.0, 1.0)


def _inputs_requiring_grad(problem: BoxLQRProblem) -> BoxLQRProblem:
    return BoxLQRProblem(*(None if z is None else z.clone().requires_grad_(True) for z in problem))


def _leaves(problem: BoxLQRProblem) -> list[Tensor]:
    return [z for z in problem if z is not None]


SIZES = [(3, 2, 6), (2, 1, 5), (3, 3, 1), (2, 1, 1)]  # (n, m, T): m > 1, m = 1, T = 1


@pytest.mark.parametrize("bounded", [True, False])
@pytest.mark.parametrize(("n", "m", "T"), SIZES)
def test_forward_matches_dense_oracle(bounded: bool, n: int, m: int, T: int) -> None:
    share = _share(m, T) if bounded else None
    problem = random_box_lqr(8, n, m, T, seed=10 + T, bounded_fraction=share, hard_fraction=0.25)
    solution = _solve(problem)
    x, u, cost = lqr_oracle_batch(problem)
    assert solution.info.all_converged
    torch.testing.assert_close(solution.u, u, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(solution.x, x, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(solution.cost, cost, atol=1e-8, rtol=1e-10)
    if bounded:
        assert bool((solution.u >= problem.u_lower).all())
        assert bool((solution.u <= problem.u_upper).all())
        at_bound = torch.stack(_active_masks(problem)).any(0).double().mean((1, 2))
        assert bool(((at_bound >= share[0]) & (at_bound <= share[1])).all())


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_one_sided_bounds_match_dense_oracle(side: str) -> None:
    problem = random_box_lqr(8, 3, 2, 6, seed=20)
    if side == "lower":
        problem = problem._replace(u_upper=None)
    else:
        problem = problem._replace(u_lower=None)
    solution = _solve(problem)
    x, u, cost = lqr_oracle_batch(problem)
    assert bool(torch.stack(_active_masks(problem)).any()), "some control should be at its bound"
    assert solution.info.all_converged
    torch.testing.assert_close(solution.u, u, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(solution.x, x, atol=1e-8, rtol=1e-10)
    torch.testing.assert_close(solution.cost, cost, atol=1e-8, rtol=1e-10)


def _gradcheck_problem(kind: str) -> BoxLQRProblem:
    """B=2, n=3, m=2, T=4 problems whose active set is locally constant (margin >= 1e-2)."""
    if kind == "unbounded":
        return random_box_lqr(2, 3, 2, 4, seed=0, bounded_fraction=None)
    problem = random_box_lqr(2, 3, 2, 4, seed=0)
    if kind == "inactive":
        u = lqr_oracle_batch(problem._replace(u_lower=None, u_upper=None))[1]
        wide = 1.0 + 2.0 * u.abs().amax()
        problem = problem._replace(u_lower=problem.u_lower - wide, u_upper=problem.u_upper + wide)
    assert min(lqr_margin(problem, b) for b in range(2)) >= 1e-2
    return problem


def _gradcheck(kind: str, fast_mode: bool) -> bool:
    problem = _inputs_requiring_grad(_gradcheck_problem(kind))
    bounded = problem.u_lower is not None

    def fn(*tensors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        data = list(tensors[:5]) + (list(tensors[5:]) if bounded else [None, None])
        solution = lqr_solve(*data, tol=1e-12)
        assert solution.info.all_converged
        return solution.x, solution.u, solution.cost

    return torch.autograd.gradcheck(
        fn, tuple(_leaves(problem)), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast_mode
    )


@pytest.mark.parametrize("kind", ["unbounded", "inactive", "active"])
def test_gradcheck_fast_mode(kind: str) -> None:
    """Every input (x_init, C, c, F, f and the bounds), random directions."""
    assert _gradcheck(kind, fast_mode=True)


@pytest.mark.slow
def test_gradcheck_full_jacobian_with_active_bounds() -> None:
    """The whole Jacobian, cross-element blocks included (about 25 s on one core)."""
    assert _gradcheck("active", fast_mode=False)


@pytest.mark.parametrize("bounded", [True, False])
def test_implicit_gradients_match_autograd_through_the_dense_kkt_solve(bounded: bool) -> None:
    share = (0.3, 0.6) if bounded else None
    problem = random_box_lqr(4, 3, 2, 6, seed=30, bounded_fraction=share, hard_fraction=0.25)
    at_lower, at_upper = _active_masks(problem)
    generator = torch.Generator().manual_seed(31)
    w_x = torch.randn(4, 6, 3, dtype=F64, generator=generator)
    w_u = torch.randn(4, 6, 2, dtype=F64, generator=generator)

    def loss(x: Tensor, u: Tensor, cost: Tensor) -> Tensor:
        return (w_x * x).sum() + (w_u * u).sum() + 0.1 * cost.sum()

    implicit = _inputs_requiring_grad(problem)
    solution = _solve(implicit)
    grads = torch.autograd.grad(loss(solution.x, solution.u, solution.cost), _leaves(implicit))
    dense = _inputs_requiring_grad(problem)
    expected = torch.autograd.grad(loss(*active_set_lqr(dense, at_lower, at_upper)), _leaves(dense))
    names = [name for name, z in zip(INPUTS, problem) if z is not None]
    for name, grad, reference in zip(names, grads, expected):
        scale = 1.0 + float(reference.abs().max())
        torch.testing.assert_close(
            grad / scale, reference / scale, atol=1e-9, rtol=0, msg=lambda s, n=name: f"{n}: {s}"
        )
    if bounded:
        # the bound gradients are nonzero exactly on the active bounds
        assert torch.equal(grads[5] != 0, at_lower)
        assert torch.equal(grads[6] != 0, at_upper)


def _mixed_batch() -> BoxLQRProblem:
    """256 problems, half of them hard (cond(C) = 1e4, 10x scales, unstable dynamics)."""
    return random_box_lqr(256, 3, 2, 8, seed=40, hard_fraction=0.5, calibrate=False)


def test_mixed_batch_converges() -> None:
    solution = _solve(_mixed_batch(), on_unconverged="ignore")
    assert len(set(solution.info.iterations.tolist())) > 1, "the batch should mix iterations"
    assert solution.info.all_converged, solution.info.describe_unconverged()


@pytest.mark.slow
def test_batch_elements_are_independent() -> None:
    """Each of 256 mixed problems equals the same problem solved alone (about 7 s)."""
    problem = _mixed_batch()
    batch = _solve(problem, on_unconverged="ignore")
    for b in range(256):
        alone = _solve(BoxLQRProblem(*(z[b : b + 1] for z in problem)), on_unconverged="ignore")
        torch.testing.assert_close(batch.u[b : b + 1], alone.u, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(batch.x[b : b + 1], alone.x, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(batch.cost[b : b + 1], alone.cost, atol=1e-10, rtol=1e-10)
        assert torch.equal(batch.info.iterations[b : b + 1], alone.info.iterations)
        assert torch.equal(batch.info.converged[b : b + 1], alone.info.converged)


def test_float32_converges_with_default_options() -> None:
    single = _solve(BoxLQRProblem(*(z.float() for z in _mixed_batch())), on_unconverged="ignore")
    assert single.u.dtype == torch.float32
    assert single.info.all_converged, single.info.describe_unconverged()


def test_float32_is_close_to_float64() -> None:
    problem = _mixed_batch()
    reference = _solve(problem, on_unconverged="ignore")
    single = _solve(BoxLQRProblem(*(z.float() for z in problem)), on_unconverged="ignore")
    # relative to each element's scale: 1e-4 (observed: about 1e-5)
    for ours, theirs in ((single.u, reference.u), (single.x, reference.x)):
        scale = 1.0 + theirs.abs().amax((1, 2), keepdim=True)
        torch.testing.assert_close(ours.double() / scale, theirs / scale, atol=1e-4, rtol=0)
    torch.testing.assert_close(single.cost.double(), reference.cost, atol=1e-4, rtol=1e-4)


def test_bound_forms_agree() -> None:
    B, n, m, T = 3, 3, 2, 5
    problem = random_box_lqr(B, n, m, T, seed=50, bounded_fraction=None)
    lower, upper = -0.3, 0.4
    forms = {
        "float": (lower, upper),
        "(m,)": (torch.full((m,), lower, dtype=F64), torch.full((m,), upper, dtype=F64)),
        "(B, m)": (torch.full((B, m), lower, dtype=F64), torch.full((B, m), upper, dtype=F64)),
        "(B, T, m)": (
            torch.full((B, T, m), lower, dtype=F64),
            torch.full((B, T, m), upper, dtype=F64),
        ),
    }
    full = forms["(B, T, m)"]
    x, u, cost = lqr_oracle_batch(problem._replace(u_lower=full[0], u_upper=full[1]))
    assert bool(((u == lower) | (u == upper)).any()), "the bounds should be active"
    grad_u = torch.randn(B, T, m, dtype=F64, generator=torch.Generator().manual_seed(51))
    bound_grads = {}
    for name, (lo, hi) in forms.items():
        if isinstance(lo, Tensor):
            lo, hi = lo.clone().requires_grad_(True), hi.clone().requires_grad_(True)
        solution = lqr_solve(*problem[:5], lo, hi)
        torch.testing.assert_close(solution.u, u, atol=1e-10, rtol=0, msg=name)
        torch.testing.assert_close(solution.x, x, atol=1e-10, rtol=0, msg=name)
        torch.testing.assert_close(solution.cost, cost, atol=1e-10, rtol=1e-12, msg=name)
        if isinstance(lo, Tensor):
            lo_grad, hi_grad = torch.autograd.grad((grad_u * solution.u).sum(), (lo, hi))
            assert lo_grad.shape == lo.shape and hi_grad.shape == hi.shape
            bound_grads[name] = (lo_grad.sum(), hi_grad.sum())
    for name, sums in bound_grads.items():
        torch.testing.assert_close(sums, bound_grads["(B, T, m)"], atol=1e-12, rtol=1e-12, msg=name)

    free = lqr_solve(*problem[:5])
    infinite = lqr_solve(*problem[:5], -float("inf"), float("inf"))
    x_free, u_free, cost_free = lqr_oracle_batch(problem)
    for solution in (free, infinite):
        torch.testing.assert_close(solution.u, u_free, atol=1e-10, rtol=0)
        torch.testing.assert_close(solution.x, x_free, atol=1e-10, rtol=0)
        torch.testing.assert_close(solution.cost, cost_free, atol=1e-10, rtol=1e-12)


def test_terms_without_batch_dimension_broadcast() -> None:
    B = 4
    problem = random_box_lqr(B, 3, 2, 5, seed=60)
    shared = [z[0] for z in problem[1:5]]  # C, c, F, f of element 0, no batch dim
    expanded = [z.unsqueeze(0).expand(B, *z.shape).clone() for z in shared]
    bounds = (problem.u_lower[0].expand(B, -1, -1), problem.u_upper[0].expand(B, -1, -1))
    shared = [z.clone().requires_grad_(True) for z in shared]
    expanded = [z.requires_grad_(True) for z in expanded]
    one = lqr_solve(problem.x_init, *shared, *bounds)
    many = lqr_solve(problem.x_init, *expanded, *bounds)
    torch.testing.assert_close(one.u, many.u, atol=1e-12, rtol=0)
    torch.testing.assert_close(one.x, many.x, atol=1e-12, rtol=0)
    grads_one = torch.autograd.grad(one.cost.sum() + one.u.sum(), shared)
    grads_many = torch.autograd.grad(many.cost.sum() + many.u.sum(), expanded)
    for g_one, g_many in zip(grads_one, grads_many):
        assert g_one.shape == g_many.shape[1:]
        torch.testing.assert_close(g_one, g_many.sum(0), atol=1e-10, rtol=1e-10)
    # a leading batch dimension of 1 broadcasts too
    ones = lqr_solve(problem.x_init, *(z.detach()[:1] for z in expanded), *bounds)
    torch.testing.assert_close(ones.u, many.u, atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", [1, 5])
def test_batch_one_single_control_backward(T: int) -> None:
    """mpc.pytorch crashes in the backward pass when B * m == 1 with bounds."""
    problem = random_box_lqr(1, 2, 1, T, seed=70 + T, bounded_fraction=(0.0, 1.0))
    at_lower, at_upper = _active_masks(problem)
    if T > 1:
        assert bool((at_lower | at_upper).any()) and not bool((at_lower | at_upper).all())
    implicit = _inputs_requiring_grad(problem)
    solution = _solve(implicit)
    (solution.u.sum() + solution.x.sum()).backward()
    dense = _inputs_requiring_grad(problem)
    x, u, _ = active_set_lqr(dense, at_lower, at_upper)
    (u.sum() + x.sum()).backward()
    for ours, theirs in zip(_leaves(implicit), _leaves(dense)):
        assert ours.grad is not None and bool(torch.isfinite(ours.grad).all())
        if theirs.numel() == 0:  # F and f when T = 1
            continue
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-9, rtol=1e-9)


# ---- input checks ------------------------------------------------------------------------


def _valid() -> dict[str, Tensor]:
    problem = random_box_lqr(2, 3, 2, 4, seed=80, calibrate=False)
    return dict(zip(INPUTS, problem))


def _text(shape: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in shape)


# (argument, wrong shape, expected full shape or None where the argument defines the sizes)
WRONG_SHAPES = [
    ("x_init", (2, 3, 1), None),
    ("C", (2, 4, 5, 4), None),
    ("c", (2, 4, 6), (2, 4, 5)),
    ("c", (3, 4, 5), (2, 4, 5)),
    ("F", (2, 4, 3, 5), (2, 3, 3, 5)),
    ("F", (2, 3, 5, 3), (2, 3, 3, 5)),
    ("f", (2, 3, 2), (2, 3, 3)),
    ("u_lower", (2, 4, 3), (2, 4, 2)),
    ("u_upper", (3, 2), (2, 2)),
]


@pytest.mark.parametrize(("name", "shape", "expected"), WRONG_SHAPES)
def test_wrong_shape_names_argument_expected_and_received(name, shape, expected) -> None:
    data = _valid()
    data[name] = torch.zeros(shape, dtype=F64)
    with pytest.raises(ValueError, match=rf"\b{name}\b") as error:
        lqr_solve(**data)
    message = str(error.value)
    assert _text(shape) in message, message
    if expected is not None:
        assert _text(expected) in message, message


@pytest.mark.parametrize("name", ["x_init", "C", "c", "F", "f"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data_is_refused(name: str, bad: float) -> None:
    data = _valid()
    data[name] = data[name].clone()
    data[name].view(-1)[1] = bad
    with pytest.raises(ValueError, match=rf"\b{name}\b.*{'NaN' if bad != bad else 'Inf'}"):
        lqr_solve(**data)


@pytest.mark.parametrize("name", ["u_lower", "u_upper"])
def test_nan_bound_is_refused(name: str) -> None:
    data = _valid()
    data[name] = data[name].clone()
    data[name][0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        lqr_solve(**data)


def test_lower_above_upper_is_refused() -> None:
    data = _valid()
    data["u_lower"] = data["u_upper"] + 0.1
    with pytest.raises(ValueError, match="u_lower"):
        lqr_solve(**data)


@pytest.mark.parametrize("name", ["C", "c", "F", "f", "u_lower", "u_upper"])
def test_mismatched_dtype_is_refused(name: str) -> None:
    data = _valid()
    data[name] = data[name].float()
    with pytest.raises(TypeError, match=rf"\b{name}\b.*float64.*float32|\b{name}\b.*float32"):
        lqr_solve(**data)


@pytest.mark.parametrize("name", ["C", "c", "F", "f", "u_lower", "u_upper"])
def test_mismatched_device_is_refused(name: str) -> None:
    data = _valid()
    data[name] = data[name].to("meta")
    with pytest.raises(ValueError, match=rf"\b{name}\b.*meta"):
        lqr_solve(**data)


@pytest.mark.parametrize(
    ("name", "value"),
    [("C", np.eye(5)), ("c", torch.zeros(2, 4, 5, dtype=torch.long)), ("u_upper", "1.0")],
)
def test_non_tensor_or_integer_input_is_a_type_error(name: str, value: object) -> None:
    data = _valid()
    data[name] = value
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        lqr_solve(**data)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_iters"):
        lqr_solve(**_valid(), max_iters=3)


@pytest.mark.parametrize("bounded", [True, False])
def test_non_positive_definite_Q_uu_warns_naming_the_time_step(bounded: bool) -> None:
    data = _valid()
    if not bounded:
        data["u_lower"] = data["u_upper"] = None
    C = data["C"].clone()
    C[:, 2, 3:, :] = 0.0
    C[:, 2, :, 3:] = 0.0
    C[:, 2, 3:, 3:] = -1e3 * torch.eye(2, dtype=F64)  # python index 2 = time step 3
    data["C"] = C
    with pytest.warns(RuntimeWarning) as record:
        solution = lqr_solve(**data, on_unconverged="ignore")
    messages = [str(w.message) for w in record]
    assert any(re.search(r"time step 3\b", text) for text in messages), messages
    assert bool(torch.isfinite(solution.u).all()) and bool(torch.isfinite(solution.x).all())
