"""The paper's experiments (agents/experiments/): each one's "test" profile runs end to end
and checks its own outcome; reruns reuse the finished trials."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mpc_policy.agents.experiments import imitation, lqr_imitation, ppo_pendulum, windy_pendulum
from mpc_policy.agents.experiments.bc_trials import (
    experiment_config,
    resolve_trials,
    step_budget,
)
from mpc_policy.agents.experiments.plots import Panel, Series, plot_curves
from mpc_policy.agents.experiments.runner import load_sweep_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _args(name: str, tmp_path: Path) -> list[str]:
    return [
        "--config",
        str(CONFIGS / f"exp_{name}.yaml"),
        "--profile",
        "test",
        "--output-dir",
        str(tmp_path / "out"),
        "--figures-dir",
        str(tmp_path / "figures"),
        "--workers",
        "2",
    ]


LQR_CONFIG = {
    "n_state": 3,
    "n_ctrl": 3,
    "horizon": 5,
    "u_bound": 1.0,
    "dynamics_scale": 0.2,
    "cost_linear_std": 0.0,
    "expert_seed": 42,
    "batch_size": 8,
    "n_iter": 3,
    "lr": 0.01,
    "log_every": 1,
    "n_test": 16,
}


def test_lqr_learner_started_at_the_expert_has_zero_loss():
    # seed == expert_seed: the learner starts at the true dynamics, where the imitation loss
    # and its gradient vanish, so RMSprop does not move it
    result = lqr_imitation.lqr_trial({**LQR_CONFIG, "seed": 42})
    assert result["initial_model_loss"] == 0.0
    assert result["final_model_loss"] < 1e-20
    assert max(result["imitation_loss"]) < 1e-20
    assert result["test_imitation_loss"] < 1e-20


def test_lqr_expert_dynamics_follow_the_papers_law():
    A, B = lqr_imitation.random_dynamics(3, 3, seed=42)
    generator = torch.Generator().manual_seed(42)
    noise = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(A, torch.eye(3, dtype=torch.float64) + 0.2 * noise, rtol=0, atol=0)
    assert B.shape == (3, 3)


@pytest.mark.slow
def test_lqr_imitation_recovers_the_model_and_reuses_trials(tmp_path):
    summary = lqr_imitation.main(_args("lqr_imitation", tmp_path))
    assert summary["runs"] == 2
    # seed 5 recovers (model loss from 1.3 to below 0.1 in 400 iterations), seed 6 does not:
    # the paper's Figure 3 in miniature
    assert summary["recovered"] >= 1
    for record in summary["records"]:
        assert record.result["imitation_loss"][-1] < record.result["imitation_loss"][0]
        assert record.result["unconverged_fraction"] == 0.0
    assert (tmp_path / "figures" / "fig3_lqr_imitation_test.png").stat().st_size > 0
    assert "recovered" in (tmp_path / "out" / "summary_test.md").read_text()
    again = lqr_imitation.main(_args("lqr_imitation", tmp_path))
    assert all(record.reused for record in again["records"])
    assert again["recovered"] == summary["recovered"]


def test_imitation_trials_merge_system_and_method_settings(tmp_path):
    config = load_sweep_config(CONFIGS / "exp_imitation.yaml", "quick")
    config = dataclasses.replace(config, output_dir=tmp_path)
    trials = resolve_trials(config)
    assert len(trials) == 2 * 5 * 3
    assert len({t["run_dir"] for t in trials}) == len(trials)
    pendulum_nn = next(t for t in trials if t["system"] == "pendulum" and t["method"] == "nn")
    assert pendulum_nn["epochs"] == 300 and "systems" not in pendulum_nn
    cartpole = [t for t in trials if t["system"] == "cartpole"]
    assert {t["dataset"]["path"] for t in cartpole} == {cartpole[0]["dataset"]["path"]}
    experiment = experiment_config(next(t for t in cartpole if t["method"] == "mpc.cost.dx"))
    assert experiment.model.dynamics_init["cart_mass"] == 3.0
    assert experiment.model.cost_init is not None
    assert experiment.train.optimizer == "rmsprop" and experiment.train.lr == 0.1
    # a trial is identified by its own kind's optimizer settings only: changing the MPC
    # methods' learning rate leaves the network's trials (and their stored results) alone
    assert set(pendulum_nn["optimizer"]) == {"nn"}
    assert {frozenset(t["optimizer"]) for t in trials if t["method"] != "nn"} == {
        frozenset({"mpc"})
    }


@pytest.mark.slow
def test_imitation_sweep_reports_the_best_validation_test_loss(tmp_path):
    summary = imitation.main(_args("imitation", tmp_path))
    losses = summary["losses"]["pendulum"]
    assert set(losses) == {"nn", "mpc.dx"}
    for method, by_size in losses.items():
        (values,) = by_size.values()
        assert all(math.isfinite(v) and v >= 0 for v in values), method
    for record in summary["records"]:
        result = record.result
        # the curves come back in memory, in float64 (not parsed back from tensorboard)
        assert result["test_loss_at_best_val"] == result["test_loss"][result["best_epoch"]]
    assert (tmp_path / "figures" / "fig4_imitation_test.png").stat().st_size > 0
    text = (tmp_path / "out" / "summary_test.md").read_text()
    # the steps trained (6 epochs of 5 batches, no patience) and the model error of mpc.dx
    assert "| pendulum | mpc.dx | 30 / " in text and "; 0 of 1 |" in text
    (mpc_dx,) = [r for r in summary["records"] if r.config["method"] == "mpc.dx"]
    # the MPC learner trained: its model moved from the start (g 15, m 3, l 0.5). Which of
    # the two imitates better after 6 epochs of 2 trajectories is a matter of the seed (the
    # MPC learner wins in 2 of 4 seeds either way): the claim is the medium sweep's
    start = {"dynamics/gravity": 15.0, "dynamics/mass": 3.0, "dynamics/length": 0.5}
    assert all(abs(mpc_dx.result["params"][name] - v) > 1e-3 for name, v in start.items())
    errors = mpc_dx.result["model_errors"]
    largest = max(errors["dynamics_g_over_l_relative"], errors["dynamics_m_l2_relative"])
    assert f"| pendulum | mpc.dx | {largest:.3g} |" in text
    # between sittings: the stored trials alone, nothing run (one of them removed)
    nn_file = (
        tmp_path
        / "out"
        / "trials"
        / f"{next(r.key for r in summary['records'] if r.config['method'] == 'nn')}.json"
    )
    nn_file.unlink()
    partial = imitation.main([*_args("imitation", tmp_path), "--finished-only"])
    assert [r.config["method"] for r in partial["records"]] == ["mpc.dx"]
    assert all(r.reused for r in partial["records"]) and not nn_file.exists()
    with pytest.raises(ValueError, match="--finished-only: no trial of imitation"):
        imitation.main([*_args("imitation", tmp_path / "empty"), "--finished-only"])


def test_finished_only_summarizes_without_collecting_the_datasets(tmp_path):
    with pytest.raises(ValueError, match="--finished-only: no trial of windy_pendulum"):
        windy_pendulum.main([*_args("windy_pendulum", tmp_path), "--finished-only"])
    assert not (tmp_path / "out" / "data").exists()  # no expert dataset was collected


@pytest.mark.slow
def test_windy_pendulum_mpc_dx_imitates_better_than_sysid(tmp_path):
    summary = windy_pendulum.main(_args("windy_pendulum", tmp_path))
    losses = summary["losses"]
    assert losses["mpc.dx"]["test_loss"][0] < losses["sysid"]["test_loss"][0]
    for record in summary["records"]:
        curve = record.result["test_sysid_loss"]
        assert len(curve) == len(record.result["epoch"]) and all(v > 0 for v in curve)
    assert (tmp_path / "figures" / "fig5_windy_pendulum_test.png").stat().st_size > 0


@pytest.mark.slow
def test_ppo_sweep_runs_every_method_and_reuses_trials(tmp_path):
    """The RL curve's test profile: the three methods, their curves on the same evaluation
    steps, the summary and the figure; a rerun reuses the trials."""
    finals = ppo_pendulum.main(_args("ppo_pendulum", tmp_path))
    assert set(finals) == {*ppo_pendulum.METHODS, "records"}
    records = finals["records"]
    assert {r.config["method"] for r in records} == set(ppo_pendulum.METHODS)
    steps = [r.result["steps"] for r in records]
    assert all(s == [0, 128, 256] for s in steps), steps
    true_cost = next(r for r in records if r.config["method"] == "mpc_true")
    assert len(set(true_cost.result["mean_return"])) == 1  # a fixed policy: one evaluation
    learned = next(r for r in records if r.config["method"] == "mpc")
    assert learned.result["weights"] != [1.0, 1.0, 0.1, 10.0]  # PPO moved the weights
    summary = (tmp_path / "out" / "summary_test.md").read_text()
    assert "| steps | mpc | mpc_true | mlp |" in summary
    assert (tmp_path / "figures" / "ppo_pendulum_test.png").stat().st_size > 0
    again = ppo_pendulum.main(_args("ppo_pendulum", tmp_path))
    assert all(r.reused for r in again["records"])


def test_a_step_budget_is_the_same_for_every_training_set_size():
    base = {"batch_size": 32, "max_steps": 100, "eval_steps": 10, "patience_steps": 25}
    small = step_budget({**base, "n_train": 10})  # one step per epoch
    large = step_budget({**base, "n_train": 100, "min_delta": 0.01})  # four steps per epoch
    assert small == {"epochs": 100, "eval_every": 10, "patience": 25, "min_delta": 0.0}
    assert large == {"epochs": 25, "eval_every": 3, "patience": 7, "min_delta": 0.01}
    assert step_budget({"epochs": 8, "n_train": 10, "batch_size": 32}) == {"epochs": 8}
    with pytest.raises(ValueError, match="max_steps: expected an integer >= 1, received 0"):
        step_budget({**base, "n_train": 10, "max_steps": 0})


def test_curves_of_runs_stopped_at_different_epochs_are_drawn_run_by_run(tmp_path):
    ragged = Series("mpc.dx", [[0, 10, 20], [0, 10]], [[1.0, 0.5, 0.4], [1.0, 0.7]])
    assert [list(x) for x in ragged.per_run_x()] == [[0, 10, 20], [0, 10]]
    shared = Series("sysid", [0, 10], [[1.0, 0.5], [0.9, 0.6]])
    assert shared.per_run_x() is None
    path = plot_curves(tmp_path / "f.png", [Panel("loss", "loss", [ragged, shared])], "steps")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="series 'bad': expected one x per run"):
        Series("bad", [[0, 10, 20], [0]], [[1.0, 0.5, 0.4], [1.0, 0.7]]).per_run_x()
