"""A system we did not write, registered by a user as one ``System`` record, runs end to
end through collect, train (mpc.dx recovers its mass) and evaluate, from Python and from a
config file that imports the module registering it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mpc_policy.agents.config import (
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)
from mpc_policy.agents.run import pipeline
from mpc_policy.agents.run.cli import main
from mpc_policy.costs import GoalWeightedCost
from mpc_policy.envs import DynamicsEnv, SystemDynamics
from mpc_policy.envs.model import stack_jacobian
from mpc_policy.envs.registry import SYSTEMS, System, get_system, register_system


# --- the user's system: a point mass pushed along a line, x = (position, velocity) ---
@dataclass(frozen=True)
class PointParams:
    mass: float = 2.0
    dt: float = 0.1
    max_force: float = 1.0


class PointDynamics(SystemDynamics):
    n_state, n_ctrl = 2, 1

    def __init__(self, params: PointParams | None = None, *, dtype=None) -> None:
        super().__init__()
        self.dt = (params or PointParams()).dt
        self.mass = torch.nn.Parameter(torch.tensor((params or PointParams()).mass, dtype=dtype))

    def forward(self, x, u):
        v = x[..., 1:] + self.dt * u / self.mass
        return torch.cat([x[..., :1] + self.dt * v, v], dim=-1)

    def jacobian(self, x, u):
        shape, dt, m = torch.broadcast_shapes(x.shape[:-1], u.shape[:-1]), self.dt, self.mass
        return stack_jacobian([[1.0, dt, dt * dt / m], [0.0, 1.0, dt / m]], shape, like=x)


def point_cost(*, learn_weights=True, learn_goal=True, dtype=None) -> GoalWeightedCost:
    weights, goal = torch.tensor([1.0, 0.1, 0.01], dtype=dtype), torch.zeros(3, dtype=dtype)
    return GoalWeightedCost(weights, goal, learn_weights=learn_weights, learn_goal=learn_goal)


class PointEnv(DynamicsEnv):
    def __init__(self, render_mode=None, params: PointParams | None = None) -> None:
        params = params or PointParams()
        dynamics = PointDynamics(params, dtype=torch.float64)
        cost = point_cost(learn_weights=False, learn_goal=False)
        super().__init__(dynamics, cost, params.max_force, np.full(2, 100.0), render_mode)

    def _sample_state(self, options):
        return self.np_random.uniform(-1.0, 1.0, size=2)

    def _draw(self, canvas) -> None:
        pass


POINT = System(
    name="test_point",
    env_id="test_custom/Point-v0",
    dynamics=PointDynamics,
    params=PointParams,
    cost=point_cost,
    control_bound=PointParams().max_force,
    goal_error=lambda state: abs(float(state[0])),
    entry_point=PointEnv,
    max_episode_steps=40,
)
# --- end of the user's system ---


@pytest.fixture(scope="module")
def point() -> System:
    return register_system(POINT)


def test_the_record_is_what_everything_asks(point):
    assert get_system("test_point") is point and SYSTEMS["test_point"] is point
    assert point.model_class is PointDynamics and point.n_state == 2 and point.n_ctrl == 1
    assert float(point.true_dynamics({"mass": 3.0}).mass.detach()) == 3.0
    with pytest.raises(ValueError, match=r"env_params: \['weight'\] are not parameters"):
        point.true_params({"weight": 1.0})
    with pytest.raises(ValueError, match="registered already"):
        register_system(System(**{**vars(POINT), "control_bound": 2.0}))
    with pytest.raises(ValueError, match="system: expected one of"):
        get_system("acrobot")


def test_a_custom_system_runs_through_collect_train_and_evaluate(point, tmp_path):
    config = ExperimentConfig(
        name="point",
        system="test_point",
        data=DataConfig(n_train=8, n_val=2, n_test=2, horizon=10),
        model=ModelConfig(method="mpc.dx", dynamics_init={"mass": 3.0}),
        train=TrainConfig(epochs=6, batch_size=4, lr=0.1, progress=False),
        evaluate=EvaluateConfig(episodes=2, max_episode_steps=30, success_angle=0.5),
        output_dir=str(tmp_path),
    )
    path, reused = pipeline.collect(config)
    assert path == tmp_path / "dataset.npz" and not reused
    result = pipeline.train(config)
    # measured: mass 3.0 -> 1.973 (truth 2.0), validation loss 8.0e-3 -> 1.5e-5
    (learned, true) = result.identifiable["mass"]
    assert true == 2.0 and learned == pytest.approx(2.0, abs=0.1)
    losses = result.curves["loss/val"]
    assert sorted(losses) == list(range(7)) and losses[6] < 0.01 * losses[0]
    evaluation = pipeline.evaluate(config)
    policy, expert = evaluation["policy"], evaluation["expert"]
    assert len(policy["returns"]) == len(expert["returns"]) == 2
    assert policy["success_rate"] == expert["success_rate"] == 1.0  # |position| <= 0.5 at the end
    assert policy["mean_return"] == pytest.approx(expert["mean_return"], rel=0.01)


def test_a_config_file_imports_the_module_that_registers_its_system(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_point.py").write_text(
        "from mpc_policy.envs.registry import register_system\n"
        "from tests.test_custom_system import POINT\n"
        "register_system(POINT)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "point.yaml"
    config.write_text(
        "name: point\n"
        "system: test_point\n"
        "imports: [my_point]\n"
        "data: {n_train: 4, n_val: 2, n_test: 2, horizon: 10}\n"
        "model: {method: mpc.dx, dynamics_init: {mass: 3.0}}\n"
        "train: {epochs: 2, batch_size: 4, lr: 0.1, progress: false}\n"
        "evaluate: {episodes: 1, max_episode_steps: 5}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "(test_point, mpc.dx)" in out and "identifiable parameters: mass" in out
    assert "verdict: " in out
    config.write_text(config.read_text().replace("[my_point]", "[no_such_module]"))
    assert main(["run", str(config)]) == 2
    assert "imports: cannot import 'no_such_module'" in capsys.readouterr().err
