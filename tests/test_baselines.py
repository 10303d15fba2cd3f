"""The paper's baselines: sysid (next-state fit, then plan) and nn (the LSTM sequence model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpc_policy.agents.config import (
    DataConfig,
    EvaluateConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)
from mpc_policy.agents.data.datasets import collect_dataset
from mpc_policy.agents.learners.nn_baseline import SequenceNetwork
from mpc_policy.agents.run import pipeline
from mpc_policy.agents.train.sysid import transition_loss
from mpc_policy.envs import PendulumDynamics
from mpc_policy.envs.params import PendulumParams


@pytest.fixture(scope="module")
def plans() -> dict[str, torch.Tensor]:
    return collect_dataset("pendulum", {"train": 8, "val": 2, "test": 2}, seed=1).tensors()


def pendulum(g: float, m: float, l: float) -> PendulumDynamics:
    return PendulumDynamics(PendulumParams(gravity=g, mass=m, length=l), dtype=torch.float64)


def test_transition_loss_is_zero_only_at_the_truth(plans):
    x, u = plans["nominal_states"], plans["nominal_actions"]
    with torch.no_grad():
        torch.testing.assert_close(
            transition_loss(pendulum(10, 1, 1), x, u),
            torch.tensor(0.0, dtype=torch.float64),
            rtol=0,
            atol=1e-20,
        )
        # same g/l and m l^2: the same motion, so the same (zero) loss
        assert float(transition_loss(pendulum(20, 0.25, 2), x, u)) < 1e-20
        assert float(transition_loss(pendulum(15, 3, 0.5), x, u)) > 1e-4
    with pytest.raises(ValueError, match="x_plan, u"):
        transition_loss(pendulum(10, 1, 1), x[:, :-1], u)


def test_sysid_fit_recovers_the_identifiable_parameters(plans):
    """RMSprop (the paper's, lr 1e-2 alpha 0.5, plus a cosine decay over 600 steps) on the
    next-state loss alone from the paper's start (15, 3, 0.5): g/l and m l^2 within 1%."""
    dynamics = pendulum(15, 3, 0.5)
    optimizer = torch.optim.RMSprop(dynamics.parameters(), lr=1e-2, alpha=0.5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 600)
    for _ in range(600):
        optimizer.zero_grad()
        transition_loss(dynamics, plans["nominal_states"], plans["nominal_actions"]).backward()
        optimizer.step()
        schedule.step()
    g, m, l = (float(p.detach()) for p in (dynamics.gravity, dynamics.mass, dynamics.length))
    assert g / l == pytest.approx(10.0, rel=0.01)
    assert m * l * l == pytest.approx(1.0, rel=0.01)


def test_sysid_trainer_logs_the_transition_and_imitation_losses(tmp_path: Path):
    config = ExperimentConfig(
        name="sysid",
        system="pendulum",
        data=DataConfig(n_train=4, n_val=2, n_test=2, horizon=10),
        model=ModelConfig(method="sysid", dynamics_init={"gravity": 12.0, "mass": 1.2}),
        train=TrainConfig(epochs=2, batch_size=2, lr=0.05, progress=False),
        evaluate=EvaluateConfig(episodes=1),
        output_dir=str(tmp_path),
    )
    pipeline.collect(config)
    pipeline.train(config)
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    sysid = [e.value for e in accumulator.Scalars("loss/sysid_train")]
    assert len(sysid) == 2 and sysid[1] < sysid[0]
    assert len(accumulator.Scalars("loss/val")) == 3  # epochs 0, 1, 2
    assert "model_error/dynamics_g_over_l_relative" in accumulator.Tags()["scalars"]


def test_sequence_network_has_the_paper_architecture():
    network = SequenceNetwork(3, 1, horizon=20)
    assert isinstance(network.cell, torch.nn.LSTMCell) and network.cell.hidden_size == 256
    x = torch.randn(5, 3, dtype=torch.float64)
    u = network.sequences(x)
    assert u.shape == (5, 20, 1) and u.dtype == torch.float64
    torch.testing.assert_close(network(x), u[:, 0], rtol=0, atol=0)
    # one state alone equals it in the batch
    torch.testing.assert_close(network.sequences(x[2:3]), u[2:3], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="x: expected shape"):
        network.sequences(torch.zeros(5, 4))


def test_sequence_network_fits_a_few_sequences(plans):
    torch.manual_seed(0)
    network = SequenceNetwork(3, 1, horizon=20, hidden_size=32)
    x, u = plans["states"][:4], plans["nominal_actions"][:4]
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    start = float((network.sequences(x) - u).pow(2).mean().detach())
    for _ in range(300):
        optimizer.zero_grad()
        loss = (network.sequences(x) - u).pow(2).mean()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.1 * start
