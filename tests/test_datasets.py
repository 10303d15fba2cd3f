"""Expert datasets: collection, the .npz round trip, splits, and refusal of bad files with a
message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc_policy.agents.data.datasets import (
    DatasetError,
    ExpertDataset,
    collect_dataset,
    load_dataset,
)
from mpc_policy.envs import PendulumDynamics

SPLITS = {"train": 3, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def dataset() -> ExpertDataset:
    return collect_dataset("pendulum", SPLITS, seed=3, episode_steps=2, horizon=8)


@pytest.fixture
def saved(dataset, tmp_path) -> Path:
    return dataset.save(tmp_path / "pendulum.npz")


def write(path: Path, arrays: dict[str, np.ndarray], metadata: dict | str) -> Path:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    np.savez(path, metadata=np.array(text), **arrays)
    return path


def test_collected_arrays_have_the_offline_rl_layout(dataset):
    n = 5 * 2
    assert len(dataset) == n
    assert dataset["observations"].shape == (n, 3) and dataset["observations"].dtype == np.float32
    assert dataset["actions"].shape == (n, 1) and dataset["actions"].dtype == np.float32
    assert (
        dataset["rewards"].shape == dataset["terminals"].shape == dataset["timeouts"].shape == (n,)
    )
    assert dataset["nominal_actions"].shape == (n, 8, 1)
    assert dataset["nominal_states"].shape == (n, 8, 3)
    np.testing.assert_array_equal(dataset["timeouts"], np.tile([False, True], 5))
    np.testing.assert_array_equal(
        dataset["actions"], dataset["nominal_actions"][:, 0].astype(np.float32)
    )
    meta = dataset.metadata
    assert meta["env_id"] == "mpc_policy/Pendulum-v0" and meta["seed"] == 3
    assert meta["env_params"]["gravity"] == 10.0 and meta["expert"]["horizon"] == 8
    assert meta["splits"] == SPLITS


def test_planned_states_are_the_true_dynamics_under_the_plans(dataset):
    x = torch.from_numpy(dataset["nominal_states"])
    u = torch.from_numpy(dataset["nominal_actions"])
    torch.testing.assert_close(x[:, 0], torch.from_numpy(dataset["states"]), rtol=0, atol=0)
    with torch.no_grad():
        predicted = PendulumDynamics(dtype=torch.float64)(x[:, :-1], u[:, :-1])
    torch.testing.assert_close(predicted, x[:, 1:], rtol=0, atol=1e-12)


def test_round_trip_and_splits(dataset, saved):
    loaded = load_dataset(saved, expect={"system": "pendulum", "horizon": 8})
    assert loaded.metadata == dataset.metadata
    for key, array in dataset.arrays.items():
        np.testing.assert_array_equal(loaded[key], array)
    assert [len(loaded.split(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert len(loaded.split("train", n_episodes=1)) == 2
    np.testing.assert_array_equal(np.unique(loaded.split("test")["episodes"]), [4])
    assert not list(saved.parent.glob("*.tmp*"))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_dataset(tmp_path / "absent.npz")


def test_a_corrupted_file_is_refused(saved):
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_dataset(saved)


def test_a_missing_array_is_named(dataset, tmp_path):
    arrays = dict(dataset.arrays)
    del arrays["nominal_actions"]
    with pytest.raises(DatasetError, match=r"missing array.*nominal_actions"):
        load_dataset(write(tmp_path / "d.npz", arrays, dataset.metadata))


def test_a_wrong_dtype_is_named(dataset, tmp_path):
    arrays = {**dataset.arrays, "actions": dataset["actions"].astype(np.float64)}
    with pytest.raises(DatasetError, match="'actions' has dtype float64, expected float32"):
        load_dataset(write(tmp_path / "d.npz", arrays, dataset.metadata))


def test_a_wrong_horizon_is_named(dataset, tmp_path):
    arrays = {**dataset.arrays, "nominal_actions": dataset["nominal_actions"][:, :5]}
    with pytest.raises(DatasetError, match=r"'nominal_actions' has shape \(10, 5, 1\).*T"):
        load_dataset(write(tmp_path / "d.npz", arrays, dataset.metadata))


def test_inconsistent_lengths_are_named(dataset, tmp_path):
    arrays = {**dataset.arrays, "rewards": dataset["rewards"][:-1]}
    with pytest.raises(DatasetError, match=r"'rewards'.*axis 0 \(N\)"):
        load_dataset(write(tmp_path / "d.npz", arrays, dataset.metadata))


def test_non_finite_values_are_named(dataset, tmp_path):
    states = dataset["states"].copy()
    states[2, 1] = np.nan
    with pytest.raises(DatasetError, match="'states' contains NaN"):
        load_dataset(
            write(tmp_path / "d.npz", {**dataset.arrays, "states": states}, dataset.metadata)
        )


def test_bad_metadata_is_named(dataset, tmp_path):
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(write(tmp_path / "a.npz", dataset.arrays, "{not json"))
    partial = {k: v for k, v in dataset.metadata.items() if k != "env_params"}
    with pytest.raises(DatasetError, match=r"lacks the field.*env_params"):
        load_dataset(write(tmp_path / "b.npz", dataset.arrays, partial))
    wrong_splits = {**dataset.metadata, "splits": {"train": 4, "val": 1, "test": 1}}
    with pytest.raises(DatasetError, match="'episodes' must number the 6 episodes"):
        load_dataset(write(tmp_path / "c.npz", dataset.arrays, wrong_splits))


def test_a_mismatched_dataset_is_refused(saved):
    with pytest.raises(DatasetError, match="'system' is 'pendulum' but 'cartpole' was expected"):
        load_dataset(saved, expect={"system": "cartpole"})
    with pytest.raises(DatasetError, match="'horizon' is 8 but 20 was expected"):
        load_dataset(saved, expect={"horizon": 20})


def test_collect_checks_its_arguments():
    with pytest.raises(ValueError, match="system"):
        collect_dataset("acrobot", SPLITS)
    with pytest.raises(ValueError, match="splits"):
        collect_dataset("pendulum", {"train": 2, "val": 0, "test": 1})
