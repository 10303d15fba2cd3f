"""Bad inputs to the solver, the policy and the environments: each one is an error of the
right type whose message names the argument (or the user's module) that is wrong.

The training, dataset, configuration and command-line cases are in
``tests/test_bad_inputs_training.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mpc_policy import (
    MPC,
    AffineDynamics,
    MPCPolicy,
    QuadraticCost,
    envs,  # noqa: F401  (registers the environments)
    lqr_solve,
)
from tests.pendulum_model import PendulumDynamics, pendulum_cost, start_states

F64 = torch.float64
B, T = 4, 6


class Returns(nn.Module):
    """A module whose forward returns ``make(x, u)``."""

    def __init__(self, make: Callable[[Tensor, Tensor], object], jacobian=None) -> None:
        super().__init__()
        self.make = make
        if jacobian is not None:
            self.jacobian = jacobian

    def forward(self, x: Tensor, u: Tensor) -> object:
        return self.make(x, u)


class WithQuadratize(nn.Module):
    def __init__(self, quadratize: Callable[[Tensor, Tensor], object]) -> None:
        super().__init__()
        self.inner = pendulum_cost()
        self.quadratize = quadratize

    def forward(self, x: Tensor, u: Tensor) -> Tensor:
        return self.inner(x, u)


def _solve(cost: nn.Module | None = None, dynamics: nn.Module | None = None, **kw) -> None:
    n_state = kw.pop("n_state", 3)
    mpc = MPC(n_state, 1, T, -2.0, 2.0, **kw)
    x_init = torch.cat([start_states(B, seed=0), torch.zeros(B, n_state - 3, dtype=F64)], 1)
    mpc(
        x_init,
        pendulum_cost() if cost is None else cost,
        PendulumDynamics() if dynamics is None else dynamics,
    )


def _pendulum_step(x: Tensor, u: Tensor) -> Tensor:
    return PendulumDynamics()(x, u)


def _lqr(x_init: Tensor | None = None, **bounds) -> None:
    n, m = 3, 2
    C = torch.eye(n + m, dtype=F64).expand(T, n + m, n + m)
    c = torch.zeros(T, n + m, dtype=F64)
    F = torch.cat([torch.eye(n, dtype=F64), torch.ones(n, m, dtype=F64)], 1).expand(T - 1, n, n + m)
    f = torch.zeros(T - 1, n, dtype=F64)
    x0 = torch.zeros(B, n, dtype=F64) if x_init is None else x_init
    lqr_solve(x0, C, c, F, f, **bounds)


def _bound_solve(lower: object, batch: int = B, horizon: int = T) -> None:
    mpc = MPC(3, 1, horizon, lower, 2.0)
    mpc(start_states(batch, seed=0), pendulum_cost(), PendulumDynamics())


def _policy(obs: object, **kw) -> None:
    policy = MPCPolicy(PendulumDynamics(), pendulum_cost(), T, -2.0, 2.0, **kw)
    policy.n_ctrl = 1
    policy(obs)


class Sized(PendulumDynamics):
    n_state, n_ctrl = 3, 1


# id, call, error type, a regular expression the message must match (it names the argument)
CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # the dynamics' returns
    (
        "dynamics wrong width",
        lambda: _solve(dynamics=Returns(lambda x, u: x[:, :2])),
        ValueError,
        r"dynamics \(Returns\).*n_state = 3",
    ),
    (
        "dynamics (N,)",
        lambda: _solve(dynamics=Returns(lambda x, u: x[:, 0])),
        ValueError,
        r"dynamics \(Returns\).*\(N,\)",
    ),
    (
        "dynamics tuple",
        lambda: _solve(dynamics=Returns(lambda x, u: (x, u))),
        TypeError,
        r"dynamics \(Returns\).*tuple",
    ),
    (
        "dynamics numpy",
        lambda: _solve(dynamics=Returns(lambda x, u: x.detach().numpy())),
        TypeError,
        r"dynamics \(Returns\).*numpy",
    ),
    (
        "dynamics float32",
        lambda: _solve(dynamics=Returns(lambda x, u: _pendulum_step(x, u).float())),
        TypeError,
        r"dynamics \(Returns\).*dtype",
    ),
    (
        "dynamics None",
        lambda: _solve(dynamics=Returns(lambda x, u: None)),
        TypeError,
        r"dynamics \(Returns\)",
    ),
    (
        "dynamics extra dim",
        lambda: _solve(dynamics=Returns(lambda x, u: _pendulum_step(x, u).unsqueeze(0))),
        ValueError,
        r"dynamics \(Returns\).*shape",
    ),
    (
        "dynamics jacobian shape",
        lambda: _solve(
            dynamics=Returns(
                _pendulum_step, jacobian=lambda x, u: torch.zeros(x.shape[0], 3, 3, dtype=F64)
            ),
            jacobian="analytic",
        ),
        ValueError,
        r"dynamics.jacobian",
    ),
    (
        "dynamics no jacobian",
        lambda: _solve(dynamics=Returns(_pendulum_step), jacobian="analytic"),
        TypeError,
        r"dynamics \(Returns\)",
    ),
    (
        "n_state vs dynamics.n_state",
        lambda: _solve(dynamics=Sized(), n_state=4),
        ValueError,
        r"n_state.*n_state=4.*Sized.*3",
    ),
    (
        "dynamics not callable",
        lambda: _solve(dynamics=torch.zeros(3)),
        TypeError,
        r"dynamics: expected a module",
    ),
    # the cost's returns
    (
        "cost (B, T, 1)",
        lambda: _solve(cost=Returns(lambda x, u: pendulum_cost()(x, u).unsqueeze(-1))),
        ValueError,
        r"cost \(Returns\).*\(4, 6, 1\).*trailing",
    ),
    (
        "cost (1, T)",
        lambda: _solve(cost=Returns(lambda x, u: pendulum_cost()(x, u)[:1])),
        ValueError,
        r"cost \(Returns\).*batch dimension",
    ),
    (
        "cost (T,)",
        lambda: _solve(cost=Returns(lambda x, u: pendulum_cost()(x, u)[0])),
        ValueError,
        r"cost \(Returns\)",
    ),
    (
        "cost scalar",
        lambda: _solve(cost=Returns(lambda x, u: pendulum_cost()(x, u).sum())),
        ValueError,
        r"cost \(Returns\).*not their sum",
    ),
    (
        "cost tuple",
        lambda: _solve(cost=Returns(lambda x, u: (pendulum_cost()(x, u),))),
        TypeError,
        r"cost \(Returns\).*tuple",
    ),
    (
        "cost float32",
        lambda: _solve(cost=Returns(lambda x, u: pendulum_cost()(x, u).float())),
        TypeError,
        r"cost \(Returns\).*dtype",
    ),
    (
        "cost quadratize shape",
        lambda: _solve(cost=WithQuadratize(lambda x, u: (torch.zeros(1), torch.zeros(1)))),
        ValueError,
        r"cost \(WithQuadratize\).*quadratize",
    ),
    (
        "cost quadratize single",
        lambda: _solve(cost=WithQuadratize(lambda x, u: torch.zeros(1))),
        TypeError,
        r"cost \(WithQuadratize\).*\(hessian, gradient\)",
    ),
    ("cost not callable", lambda: _solve(cost="quadratic"), TypeError, r"cost: expected a module"),
    # bounds
    (
        "bound (B, m) with B == T",
        lambda: _bound_solve(torch.full((T, 1), -2.0, dtype=F64), batch=T),
        ValueError,
        r"u_lower: .*ambiguous.*\(6, 1, 1\).*\(1, 6, 1\)",
    ),
    (
        "bound (T, m) with B != T",
        lambda: _bound_solve(torch.full((T, 1), -2.0, dtype=F64)),
        ValueError,
        r"u_lower: .*\(1, 6, 1\)",
    ),
    (
        "bound time-major",
        lambda: _bound_solve(torch.full((T, B, 1), -2.0, dtype=F64)),
        ValueError,
        r"u_lower: .*batch first",
    ),
    ("bound numpy array", lambda: _bound_solve(np.full(1, -2.0)), TypeError, r"u_lower: .*numpy"),
    ("bound string", lambda: _bound_solve("-2"), TypeError, r"u_lower: expected a float"),
    (
        "bound +inf lower",
        lambda: _bound_solve(float("inf")),
        ValueError,
        r"u_lower: inf .*admits no control",
    ),
    ("bound NaN", lambda: _bound_solve(float("nan")), ValueError, r"u_lower: contains NaN"),
    (
        "bound float32",
        lambda: _bound_solve(torch.full((1,), -2.0)),
        TypeError,
        r"u_lower: expected dtype torch.float64",
    ),
    (
        "lqr bound ambiguous",
        lambda: _lqr(x_init=torch.zeros(T, 3, dtype=F64), u_lower=torch.zeros(T, 2, dtype=F64)),
        ValueError,
        r"u_lower: .*ambiguous",
    ),
    (
        "lqr x_init width",
        lambda: _lqr(x_init=torch.zeros(B, 2, dtype=F64)),
        ValueError,
        r"x_init: expected shape \(B, n\) with n = 3",
    ),
    # options
    (
        "with_options typo",
        lambda: MPC(3, 1, T).with_options(max_iters=5),
        TypeError,
        r"unknown solver option.*max_iters",
    ),
    (
        "with_options bad value",
        lambda: MPC(3, 1, T).with_options(tol=-1.0),
        ValueError,
        r"tol: expected a positive",
    ),
    ("option string number", lambda: MPC(3, 1, T, tol="1e-3"), TypeError, r"tol: expected a float"),
    (
        "option max_iter 0",
        lambda: MPC(3, 1, T, max_iter=0),
        ValueError,
        r"max_iter: expected an integer >= 1",
    ),
    (
        "option max_iter float",
        lambda: MPC(3, 1, T, max_iter=2.5),
        ValueError,
        r"max_iter: expected an integer >= 1",
    ),
    (
        "option literal",
        lambda: MPC(3, 1, T, on_unconverged="skip"),
        ValueError,
        r"on_unconverged: expected one of",
    ),
    # policy
    (
        "policy obs NaN",
        lambda: _policy(torch.tensor([[1.0, 0.0, float("nan")]], dtype=F64)),
        ValueError,
        r"obs: rows \[0\]",
    ),
    (
        "policy obs int",
        lambda: _policy(torch.zeros(1, 3, dtype=torch.long)),
        TypeError,
        r"obs: expected a floating-point",
    ),
    (
        "policy obs 3-D",
        lambda: _policy(torch.zeros(1, 1, 3, dtype=F64)),
        ValueError,
        r"obs: expected shape \(B, n_obs\)",
    ),
    (
        "policy option typo",
        lambda: _policy(torch.zeros(1, 3, dtype=F64), max_iters=3),
        TypeError,
        r"unknown solver option",
    ),
    # environments
    (
        "env action NaN",
        lambda: _env_step(np.array([np.nan], dtype=np.float32)),
        ValueError,
        r"action: expected finite",
    ),
    (
        "env action shape",
        lambda: _env_step(np.zeros(2, dtype=np.float32)),
        ValueError,
        r"action: expected shape",
    ),
    (
        "env action dtype",
        lambda: _env_step(np.array(["a"])),
        TypeError,
        r"action: expected real numbers",
    ),
    (
        "env reset option",
        lambda: gym.make("mpc_policy/Pendulum-v0").reset(options={"angle": 1.0}),
        ValueError,
        r"options: unknown reset options",
    ),
]


def _env_step(action: np.ndarray) -> None:
    env = gym.make("mpc_policy/Pendulum-v0")
    env.reset(seed=0)
    env.step(action)


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_named_error(call: Callable[[], object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_error_inside_a_user_module_is_noted_with_the_call() -> None:
    """MPC(n_state=4) with a 3-state model that unpacks x: the model's own error, with a note
    of the module and the shapes the solver called it with."""
    with pytest.raises(ValueError, match="too many values to unpack") as caught:
        _solve(n_state=4, dynamics=PendulumDynamics())
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "dynamics (PendulumDynamics)" in notes and "(4, 4)" in notes


def test_numpy_scalars_are_accepted_where_numbers_are() -> None:
    mpc = MPC(3, 1, T, np.float32(-2.0), np.float64(2.0), max_iter=np.int64(30))
    solution = mpc(start_states(B, seed=0), pendulum_cost(), PendulumDynamics())
    assert solution.info.all_converged


def test_bounds_infinite_on_both_sides_are_unbounded() -> None:
    x_init = start_states(B, seed=0)
    free = MPC(3, 1, T)(x_init, pendulum_cost(), PendulumDynamics())
    infinite = MPC(3, 1, T, -float("inf"), float("inf"))(
        x_init, pendulum_cost(), PendulumDynamics()
    )
    torch.testing.assert_close(infinite.u, free.u, atol=1e-10, rtol=0)


def test_explicit_per_step_and_per_element_bounds() -> None:
    x_init = start_states(T, seed=0)  # B == T: the explicit 3-D forms
    per_step = torch.linspace(-2.0, -0.5, T, dtype=F64).view(1, T, 1)
    solution = MPC(3, 1, T, per_step, 2.0)(x_init, pendulum_cost(), PendulumDynamics())
    assert bool((solution.u >= per_step - 1e-12).all())
    per_element = torch.linspace(-2.0, -0.5, T, dtype=F64).view(T, 1, 1)
    solution = MPC(3, 1, T, per_element, 2.0)(x_init, pendulum_cost(), PendulumDynamics())
    assert bool((solution.u >= per_element - 1e-12).all())


def test_per_element_affine_dynamics_and_quadratic_cost_on_rows() -> None:
    """Per-element parameters (B, ...) read in the row layout give each element its own
    problem (the LQR solution of each, alone)."""
    g = torch.Generator().manual_seed(0)
    n, m = 2, 1
    F = torch.cat(
        [
            0.9 * torch.eye(n, dtype=F64).repeat(B, 1, 1),
            torch.randn(B, n, m, generator=g, dtype=F64),
        ],
        -1,
    )
    C = torch.eye(n + m, dtype=F64).repeat(B, T, 1, 1) * torch.rand(
        B, 1, 1, 1, generator=g, dtype=F64
    ).add(0.5)
    x_init = torch.randn(B, n, generator=g, dtype=F64)
    solution = MPC(n, m, T, -0.3, 0.3)(x_init, QuadraticCost(C), AffineDynamics(F))
    for i in range(B):
        alone = lqr_solve(
            x_init[i : i + 1],
            C[i],
            torch.zeros(T, n + m, dtype=F64),
            F[i].expand(T - 1, n, n + m),
            torch.zeros(T - 1, n, dtype=F64),
            -0.3,
            0.3,
        )
        torch.testing.assert_close(solution.u[i], alone.u[0], atol=1e-9, rtol=0)
