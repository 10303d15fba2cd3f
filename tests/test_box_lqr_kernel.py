"""The compiled box-LQR solve (``mpc_policy.numerics.compiled.box_lqr``) against the DDP loop it
replaces: ``box_ddp`` on the same backend's kernels must take the same decisions (iterations,
convergence, stalls, step sizes) and return the same trajectory, gains and gradients."""

from __future__ import annotations

import importlib

import pytest
import torch

from mpc_policy import lqr_solve
from mpc_policy.options import MPCOptions
from mpc_policy.solve.backend import TORCH, select
from tests.oracles import BoxLQRProblem, lqr_oracle_batch, random_box_lqr

pytest.importorskip("numba")
lqr_module = importlib.import_module("mpc_policy.lqr")

F64 = torch.float64

_CASES = {
    "bounded_m2": (lambda: random_box_lqr(8, 3, 2, 6, seed=16, hard_fraction=0.25), {}),
    "bounded_m1": (lambda: random_box_lqr(8, 2, 1, 5, seed=15, hard_fraction=0.25), {}),
    "hard_mixed_256": (
        lambda: random_box_lqr(256, 3, 2, 8, seed=40, hard_fraction=0.5, calibrate=False),
        {},
    ),
    "batch_1": (lambda: random_box_lqr(1, 2, 1, 5, seed=14, calibrate=False), {}),
    "out_of_iterations": (
        lambda: random_box_lqr(32, 3, 2, 8, seed=41, hard_fraction=0.5, calibrate=False),
        {"max_iter": 1},
    ),
    # a single step size: an element whose full step raises the cost stalls
    "no_line_search": (
        lambda: random_box_lqr(64, 3, 2, 8, seed=42, hard_fraction=0.5, calibrate=False),
        {"max_line_search": 1, "max_iter": 4},
    ),
    "one_sided": (
        lambda: random_box_lqr(8, 3, 2, 6, seed=16, hard_fraction=0.25)._replace(u_upper=None),
        {},
    ),
}


def _solve(problem: BoxLQRProblem, fused: bool, monkeypatch: pytest.MonkeyPatch, **options):
    select = lqr_module.select
    if not fused:
        monkeypatch.setattr(
            lqr_module, "select", lambda *a, **k: select(*a, **k)._replace(box_lqr=None)
        )
    leaves = [None if z is None else z.clone().requires_grad_(True) for z in problem]
    solution = lqr_solve(*leaves, backend="compiled", on_unconverged="ignore", **options)
    weights = torch.linspace(-1.0, 1.0, solution.u.numel(), dtype=solution.u.dtype)
    ((solution.u * weights.view_as(solution.u)).sum() + solution.x.square().sum()).backward()
    monkeypatch.undo()
    return solution, [None if z is None else z.grad for z in leaves]


def _ddp(problem: BoxLQRProblem, fused: bool, reference: bool = False, **options):
    """The bounded solve of lqr_solve (before its condensed retry of stalled elements), with
    the compiled kernels, by the compiled box-LQR solve or by box_ddp; ``reference``: by
    box_ddp on the torch kernels (no compiled code at all)."""
    opts = MPCOptions(**options)
    kernels = TORCH if reference else select("compiled", torch.device("cpu"))
    if not fused:
        kernels = kernels._replace(box_lqr=None)
    C = 0.5 * (problem.C + problem.C.transpose(-1, -2))
    model = lqr_module.QuadraticModel(
        *(z.transpose(0, 1).contiguous() for z in (C, problem.c, problem.F, problem.f))
    )
    B, T, m = problem.u_lower.shape
    lower = problem.u_lower.transpose(0, 1).contiguous()
    upper = (
        torch.full_like(lower, float("inf"))
        if problem.u_upper is None
        else problem.u_upper.transpose(0, 1).contiguous()
    )
    zeros = torch.zeros(T, B, m, dtype=lower.dtype)
    with torch.inference_mode():
        return lqr_module._bounded_solve(model, problem.x_init, zeros, lower, upper, opts, kernels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(_CASES))
def test_compiled_solve_takes_the_decisions_of_the_ddp_loop(case: str, dtype: torch.dtype) -> None:
    make, options = _CASES[case]
    problem = BoxLQRProblem(*(None if z is None else z.to(dtype) for z in make()))
    fused, loop = _ddp(problem, True, **options), _ddp(problem, False, **options)
    for name in ("converged", "codes"):
        assert torch.equal(getattr(fused.info, name), getattr(loop.info, name)), name
    same = fused.info.iterations == loop.info.iterations
    if dtype == F64:
        assert bool(same.all())
    else:
        # float32: an ill-conditioned element that creeps on by steps whose cost change is
        # at the rounding of the cost may stall a few steps earlier or later
        stalled = torch.tensor([name == "STALLED" for name in loop.info.status_names])
        assert bool((same | stalled).all())
    # relative to each tensor's scale; an element stopped before its fixed point
    # (ill-conditioned, out of iterations or stalled) is where rounding shows most
    done = loop.info.converged
    assert torch.equal(fused.gains.free[:, same], loop.gains.free[:, same])
    for tight, rows in ((True, done), (False, ~done & same)):
        tol = _tolerance(dtype, tight)
        pairs = [(getattr(fused, z), getattr(loop, z)) for z in ("x", "u")]
        pairs += [(getattr(fused.gains, z), getattr(loop.gains, z)) for z in ("K", "k", "chol")]
        for ours, reference in pairs:
            scale = 1.0 + reference.abs().max()
            torch.testing.assert_close(ours[:, rows] / scale, reference[:, rows] / scale, **tol)
        scale = 1.0 + loop.cost.abs().max()
        torch.testing.assert_close(fused.cost[rows] / scale, loop.cost[rows] / scale, **tol)
        torch.testing.assert_close(fused.info.step_size[rows], loop.info.step_size[rows], **tol)
    torch.testing.assert_close(fused.info.residual[done], loop.info.residual[done], **tol)


@pytest.mark.parametrize("case", list(_CASES))
def test_compiled_solve_takes_the_decisions_of_the_torch_reference(case: str) -> None:
    """Pinned apart from the compiled recursion: box_ddp on the torch kernels (float64)
    makes the same convergence, stall and step-size decisions at every element."""
    make, options = _CASES[case]
    problem = make()
    fused, reference = _ddp(problem, True, **options), _ddp(problem, False, True, **options)
    assert reference.info.backend == "torch" and fused.info.backend == "compiled"
    assert torch.equal(fused.info.codes, reference.info.codes)
    assert torch.equal(fused.info.iterations, reference.info.iterations)
    assert torch.equal(fused.info.step_size, reference.info.step_size)
    done = reference.info.converged
    for ours, theirs in ((fused.u, reference.u), (fused.x, reference.x)):
        scale = 1.0 + theirs.abs().max()
        torch.testing.assert_close(
            ours[:, done] / scale, theirs[:, done] / scale, atol=1e-10, rtol=0
        )


@pytest.mark.parametrize("case", ["bounded_m2", "out_of_iterations", "no_line_search"])
def test_compiled_convergence_decisions_agree_with_the_dense_oracle(case: str) -> None:
    """Pinned by the problem alone: an element called CONVERGED is at the exact solution
    (condensed QP, BVLS), and one called MAX_ITER or STALLED is not yet there."""
    make, options = _CASES[case]
    problem = make()
    fused = _ddp(problem, True, **options)
    _, u_exact, _ = lqr_oracle_batch(problem)
    u = fused.u.transpose(0, 1)
    gap = (u - u_exact).abs().amax(dim=(1, 2)) / (1.0 + u_exact.abs().amax(dim=(1, 2)))
    done = fused.info.converged
    assert bool(done.any()) and bool((~done).any()) == (case != "bounded_m2")
    assert float(gap[done].max()) < 1e-6
    if case != "bounded_m2":
        assert float(gap[~done].min()) > 1e-6


def _tolerance(dtype: torch.dtype, tight: bool) -> dict[str, float]:
    if dtype == F64:
        return {"atol": 1e-10, "rtol": 1e-10}
    return {"atol": 1e-5, "rtol": 1e-5} if tight else {"atol": 1e-3, "rtol": 1e-3}


def test_the_cases_reach_every_outcome() -> None:
    """The comparison above covers converged, out-of-iterations and stalled elements."""
    names: set[str] = set()
    for make, options in _CASES.values():
        names.update(_ddp(make(), True, **options).info.status_names)
    assert {"CONVERGED", "MAX_ITER", "STALLED"} <= names


@pytest.mark.parametrize("case", ["hard_mixed_256", "one_sided"])
def test_lqr_solve_gradients_are_those_of_the_ddp_loop(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, options = _CASES[case]
    fused, fused_grads = _solve(make(), True, monkeypatch, **options)
    loop, loop_grads = _solve(make(), False, monkeypatch, **options)
    torch.testing.assert_close(fused.u, loop.u, atol=1e-10, rtol=1e-10)
    assert torch.equal(fused.info.codes, loop.info.codes)
    for a, b in zip(fused_grads, loop_grads):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_an_overflowing_element_is_reported_by_the_ddp_loop() -> None:
    """A rollout that overflows float32 is not the compiled solve's to report: the solve
    falls back to box_ddp, which says NONFINITE for that element alone."""
    problem = random_box_lqr(4, 3, 2, 6, seed=16)
    problem = BoxLQRProblem(*(None if z is None else z.float() for z in problem))
    F = problem.F.clone()
    F[2, :, :, :3] *= 1e9  # element 2's states grow by 1e9 a step: inf by the end
    solution = lqr_solve(
        problem.x_init,
        problem.C,
        problem.c,
        F,
        problem.f,
        u_lower=problem.u_lower,
        u_upper=problem.u_upper,
        backend="compiled",
        on_unconverged="ignore",
    )
    assert solution.info.status_names[2] == "NONFINITE"
    assert all(name == "CONVERGED" for i, name in enumerate(solution.info.status_names) if i != 2)
