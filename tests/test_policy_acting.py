"""``MPCPolicy.forward`` without a gradient (acting) takes a short way to the compiled
kernel: the same call on the same inputs as ``MPC``'s compiled path. These tests drive two
copies of a policy through the same closed loop, one acting (``policy(obs)`` under no_grad)
and one planning (``policy.plan(obs)``, through ``MPC``), and demand the same actions bit for
bit, the same reports and the same cached plans; and that the short way is taken where it
should be and left where it must not be."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mpc_policy import MPC, GoalWeightedCost, MPCPolicy
from mpc_policy.envs import PendulumDynamics, PendulumParams, pendulum_cost
from mpc_policy.solution import ConvergenceError
from mpc_policy.solve.backend import compiled_available

pytestmark = pytest.mark.skipif(not compiled_available(), reason="needs numba")

T = 12


def _policy(**kwargs: object) -> MPCPolicy:
    options: dict[str, object] = dict(
        u_lower=-2.0, u_upper=2.0, solve_dtype=torch.float64, warm_start=True
    )
    options.update(kwargs)
    dynamics = options.pop("dynamics", None) or PendulumDynamics(PendulumParams())
    return MPCPolicy(dynamics, pendulum_cost(), T, **options)  # type: ignore[arg-type]


def _start(B: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    theta = torch.linspace(-3.0, 3.0, B, dtype=torch.float64)
    speed = torch.linspace(-1.0, 1.0, B, dtype=torch.float64)
    return torch.stack([theta.cos(), theta.sin(), speed], -1).to(dtype)


def _step(obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The true pendulum one step on (the closed loop of both copies sees the same obs)."""
    with torch.no_grad():
        x = obs.double()
        nxt = PendulumDynamics(PendulumParams(), dtype=torch.float64)(
            x, action.double().nan_to_num(0.0)
        )
    return nxt.nan_to_num(0.0).to(obs.dtype)


def _same_info(a: object, b: object) -> None:
    for name in ("iterations", "converged", "residual", "step_size", "status", "nonfinite_source"):
        first, second = getattr(a, name), getattr(b, name)
        assert torch.equal(first.nan_to_num(-1.0), second.nan_to_num(-1.0)), name
    assert a.path == b.path == "compiled-ddp"  # type: ignore[attr-defined]


def _closed_loop(
    acting: MPCPolicy,
    planning: MPCPolicy,
    obs: torch.Tensor,
    steps: int = 6,
    starts: dict[int, torch.Tensor] | None = None,
) -> None:
    """Both copies from the same observations: acting through forward, planning through
    plan(); actions, reports and cached plans equal at every step."""
    starts = starts or {}
    for step in range(steps):
        episode_start = starts.get(step)
        with torch.no_grad():
            action = acting(obs, episode_start=episode_start)
            planned = planning.plan(obs, episode_start=episode_start).u[:, 0]
        assert action.dtype == obs.dtype
        assert torch.equal(action.nan_to_num(7.0), planned.nan_to_num(7.0)), step
        _same_info(acting.last_info, planning.last_info)
        if acting.warm_start:
            assert torch.equal(acting._warm_plan, planning._warm_plan)
        obs = _step(obs, action)


@pytest.mark.parametrize(
    ("obs_dtype", "solve_dtype"),
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float64, torch.float32),
        (torch.float32, None),
    ],
)
def test_acting_equals_planning(obs_dtype: torch.dtype, solve_dtype: torch.dtype | None) -> None:
    acting = _policy(solve_dtype=solve_dtype)
    if solve_dtype == torch.float32 or (solve_dtype is None and obs_dtype == torch.float32):
        acting = _policy(solve_dtype=solve_dtype, max_iter=50)
    planning = copy.deepcopy(acting)
    _closed_loop(
        acting, planning, _start(5, obs_dtype), starts={3: torch.tensor([1, 0, 0, 1, 0]).bool()}
    )


@pytest.mark.parametrize("bounds", [(None, None), (-1.0, None), (None, 0.5), (-0.7, 0.7)])
def test_acting_equals_planning_with_any_number_bounds(bounds: tuple) -> None:
    acting = _policy(u_lower=bounds[0], u_upper=bounds[1], warm_start=False)
    planning = copy.deepcopy(acting)
    _closed_loop(acting, planning, _start(4))


def test_a_single_observation_and_an_array() -> None:
    acting = _policy()
    planning = copy.deepcopy(acting)
    obs = _start(1)[0]
    with torch.no_grad():
        action = acting(obs.numpy())
        planned = planning.plan(obs).u[:, 0]
    assert action.shape == (1, 1)
    assert torch.equal(action, planned)


def test_nonfinite_rows_act_nan_and_restart_from_zeros() -> None:
    """A row whose dynamics overflow (a zero mass) is NONFINITE on both ways: a NaN action,
    a cached plan of zeros, the others unaffected."""
    params = PendulumParams()
    dynamics = PendulumDynamics(params)
    dynamics.mass = torch.nn.Parameter(torch.tensor([1.0, 0.0, 1.0]))
    acting = _policy(dynamics=dynamics, on_unconverged="ignore")
    planning = copy.deepcopy(acting)
    obs = _start(3)
    with torch.no_grad():
        action = acting(obs)
        planning.plan(obs)
    assert bool(action[1].isnan().all()) and bool(action[[0, 2]].isfinite().all())
    assert acting.last_info.status_names[1] == "NONFINITE"
    assert torch.equal(acting._warm_plan[1], torch.zeros(T, 1, dtype=torch.float64))
    _closed_loop(acting, planning, obs, steps=3)


def test_unconverged_rows_warn_alike() -> None:
    acting = _policy(max_iter=1, on_unconverged="warn", warm_start=False)
    planning = copy.deepcopy(acting)
    obs = _start(4)
    messages = []
    for call in (lambda: acting(obs), lambda: planning.plan(obs)):
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            call()
        messages.append([str(w.message) for w in caught])
        assert caught and all(w.filename == __file__ for w in caught)  # the user's line
    assert messages[0] == messages[1]
    raising = _policy(max_iter=1, on_unconverged="raise", warm_start=False)
    with pytest.raises(ConvergenceError, match="did not reach a fixed point"), torch.no_grad():
        raising(obs)


def test_parameters_are_read_at_every_call() -> None:
    acting = _policy(warm_start=False)
    planning = copy.deepcopy(acting)
    obs = _start(3)
    _closed_loop(acting, planning, obs, steps=1)
    for policy in (acting, planning):
        policy.dynamics.gravity.data.mul_(1.5)  # in place, not seen by a version counter
        policy.cost.goal.data.add_(0.05)
    _closed_loop(acting, planning, obs, steps=2)
    near_top = _start(3) * torch.tensor([1.0, 0.1, 0.1])  # unsaturated controls
    with torch.no_grad():
        before = acting(near_top)
        acting.dynamics.gravity = torch.nn.Parameter(torch.tensor(3.0))  # replaced
        after = acting(near_top)
        planned = planning.plan(near_top).u[:, 0]
        planning.dynamics.gravity = torch.nn.Parameter(torch.tensor(3.0))
        replanned = planning.plan(near_top).u[:, 0]
    assert not torch.equal(before, after)
    assert torch.equal(before, planned) and torch.equal(after, replanned)


def test_a_traced_user_module_acts_alike() -> None:
    class Pendulum(torch.nn.Module):  # README.md's example
        n_ctrl = 1

        def __init__(self) -> None:
            super().__init__()
            self.g = torch.nn.Parameter(torch.tensor(10.0))

        def forward(self, x: torch.Tensor, u: torch.Tensor, dt: float = 0.05) -> torch.Tensor:
            theta = torch.atan2(x[..., 1], x[..., 0])
            w = x[..., 2] + (1.5 * self.g * x[..., 1] + 3.0 * u[..., 0]) * dt
            return torch.stack([torch.cos(theta + w * dt), torch.sin(theta + w * dt), w], -1)

    acting = _policy(dynamics=Pendulum().double())
    planning = copy.deepcopy(acting)
    _closed_loop(acting, planning, _start(2), steps=4)


def test_the_short_way_is_taken_and_left_where_it_must() -> None:
    """Acting with numbers as bounds and the identity as obs_to_state does not go through
    MPC.forward; a gradient, tensor bounds, a state map or u_init do (and still answer)."""
    policy = _policy()
    obs = _start(2)
    calls = []
    original = MPC.forward

    def counted(self: MPC, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MPC, "forward", counted)
        with torch.no_grad():
            policy(obs)
        assert calls == []
        policy(obs)  # a gradient can flow: MPC
        assert len(calls) == 1
        with torch.no_grad():
            policy(obs, u_init=torch.zeros(2, T, 1))
            _policy(u_lower=torch.tensor([-2.0]), u_upper=2.0)(obs)
            _policy(obs_to_state=lambda o: o * 1.0)(obs)
        assert len(calls) == 4


def test_a_policy_without_compiled_twin_acts_on_the_torch_path() -> None:
    cost = GoalWeightedCost(torch.tensor([1.0, 1.0, 0.1, 0.001]), torch.tensor([1.0, 0, 0, 0]))

    class NoTwin(GoalWeightedCost):
        pass

    other = NoTwin(torch.tensor([1.0, 1.0, 0.1, 0.001]), torch.tensor([1.0, 0, 0, 0]))
    for c, path in ((cost, "compiled-ddp"), (other, "torch")):
        policy = MPCPolicy(PendulumDynamics(), c, T, u_lower=-2.0, u_upper=2.0)
        with torch.no_grad():
            action = policy(_start(2))
        assert action.isfinite().all() and policy.last_info.path == path
