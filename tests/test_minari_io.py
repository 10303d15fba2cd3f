"""Expert datasets to and from Minari: the round trip keeps every array and the metadata;
a Minari dataset without the expert's plans imports with horizon 1 and behaviour cloning
on the first control moves the learner's physics towards the truth. Skipped without minari
(CI installs it: ``pip install "minari[create,hdf5]"``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("minari")
pytest.importorskip("h5py")

from mpc_policy import MPCPolicy
from mpc_policy.agents.data.datasets import DatasetError, collect_dataset
from mpc_policy.agents.data.minari_io import export_minari, import_minari, trainer_splits
from mpc_policy.agents.train.objectives import (
    Batch,
    FirstControlObjective,
    ImitationObjective,
    imitation_objective,
)
from mpc_policy.envs import PendulumDynamics, pendulum_cost


@pytest.fixture(autouse=True)
def _datasets_here(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


@pytest.fixture(scope="module")
def expert_data():
    """A pendulum expert's data of the paper's kind, at a non-default mass."""
    return collect_dataset(
        "pendulum",
        {"train": 3, "val": 1, "test": 1},
        seed=5,
        episode_steps=4,
        horizon=8,
        env_params={"mass": 1.2},
    )


@pytest.mark.filterwarnings("ignore::UserWarning:minari")
def test_round_trip_keeps_every_array_and_the_metadata(expert_data):
    import minari

    export_minari(expert_data, "mpc_policy/pendulum/expert-v0", author="tests")
    stored = minari.load_dataset("mpc_policy/pendulum/expert-v0")
    assert stored.total_episodes == 5 and stored.total_steps == 20
    episode = next(stored.iterate_episodes())
    assert episode.observations.shape == (5, 3) and episode.infos["nominal_actions"].shape == (
        5,
        8,
        1,
    )
    assert np.isnan(episode.infos["nominal_actions"][-1]).all()  # the last state: no plan
    env = stored.recover_environment()  # the physics as plain data in the spec
    assert env.unwrapped.params.mass == 1.2
    back = import_minari("mpc_policy/pendulum/expert-v0")
    assert back.metadata == expert_data.metadata
    assert set(back.arrays) == set(expert_data.arrays)
    for key, array in expert_data.arrays.items():
        assert back[key].dtype == array.dtype, key
        np.testing.assert_array_equal(back[key], array, err_msg=key)
    for split in ("train", "val", "test"):
        assert len(back.split(split)) == len(expert_data.split(split))
    assert type(imitation_objective(back, _learner())) is ImitationObjective


def _learner(gravity: float = 10.0) -> MPCPolicy:
    return MPCPolicy(
        PendulumDynamics({"gravity": gravity, "mass": 1.2}, dtype=torch.float64),
        pendulum_cost(learn_weights=False, learn_goal=False, dtype=torch.float64),
        horizon=8,
        u_lower=-2.0,
        u_upper=2.0,
        jacobian="analytic",
        on_unconverged="ignore",
    )


@pytest.mark.filterwarnings("ignore::UserWarning:minari")
def test_a_dataset_without_plans_trains_on_the_first_control(expert_data):
    export_minari(expert_data, "others/pendulum/recorded-v0", plans=False)
    data = import_minari("others/pendulum/recorded-v0")  # 3/1/1 episodes by default
    assert data.metadata["expert"]["plans"] is False and data.metadata["expert"]["horizon"] == 1
    assert data.metadata["env_params"]["mass"] == 1.2  # from the recorded spec
    assert data.metadata["splits"] == {"train": 3, "val": 1, "test": 1}
    # the states are the (float32) observations
    np.testing.assert_allclose(data["states"], expert_data["states"], rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data["nominal_actions"][:, 0], expert_data["actions"])
    # the learner's first control against the expert's action: zero at the truth
    truth = _learner()
    objective = imitation_objective(data, truth)
    assert isinstance(objective, FirstControlObjective)
    splits = trainer_splits(data)
    train = splits["train"]
    batch = Batch("train", torch.arange(len(train["x"])), train["x"], train["u"], train["x_plan"])
    with torch.no_grad():
        u, _ = objective.predict(batch)
    assert u.shape == (12, 1, 1)
    first = expert_data.split("train")["nominal_actions"][:, 0, 0]
    np.testing.assert_allclose(u[:, 0, 0].numpy(), first, atol=1e-3)
    # a wrong gravity learns back towards the truth from first controls alone
    learner = _learner(gravity=13.0)
    objective = imitation_objective(data, learner, warm_start=False)
    optimizer = torch.optim.Adam([learner.dynamics.gravity], lr=0.3)
    losses = []
    for _ in range(30):  # measured: g 13 -> 9.7, loss 1.2e-2 -> 2e-4
        loss, _, _ = objective.train_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    gravity = float(learner.dynamics.gravity.detach())
    assert losses[-1] < 0.1 * losses[0]
    assert abs(gravity - 10.0) < 0.5, gravity


@pytest.mark.filterwarnings("ignore::UserWarning:minari")
def test_import_errors_name_the_problem(expert_data):
    export_minari(expert_data, "others/pendulum/plain-v0", plans=False)
    with pytest.raises(DatasetError, match="do not add up"):
        import_minari("others/pendulum/plain-v0", splits={"train": 1, "val": 1, "test": 1})
    with pytest.raises(DatasetError, match="at least one episode"):
        import_minari("others/pendulum/plain-v0", splits={"train": 4, "val": 0, "test": 1})
    with pytest.raises(DatasetError, match="observations: expected"):
        import_minari("others/pendulum/plain-v0", system="cartpole")
