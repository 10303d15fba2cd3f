"""The track-limited cart-pole: its environment, its constraint module, its expert, the example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from mpc_policy.agents.data.expert import MPCExpert
from mpc_policy.envs.cartpole import (
    TRACK_ENV_ID,
    CartPoleDynamics,
    CartPoleEnv,
    CartPoleTrackEnv,
    TrackLimit,
    cartpole_cost,
    cartpole_state,
)

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def test_the_environment_passes_gymnasiums_checker_and_is_registered() -> None:
    check_env(CartPoleTrackEnv(track_limit=0.5), skip_render_check=True)
    env = gymnasium.make(TRACK_ENV_ID, track_limit=0.7)
    assert isinstance(env.unwrapped, CartPoleTrackEnv) and env.unwrapped.track_limit == 0.7
    for seed in range(20):
        env.reset(seed=seed)
        assert abs(float(env.unwrapped.state[0])) <= 0.35


def test_it_steps_like_the_cartpole_and_terminates_off_the_track() -> None:
    track, free = CartPoleTrackEnv(track_limit=0.5), CartPoleEnv()
    start = cartpole_state(0.3, 2.0, 0.2, 0.0)
    track.reset(options={"state": start})
    free.reset(options={"state": start})
    action = np.array([50.0], dtype=np.float32)
    for _ in range(20):
        observation, reward, terminated, truncated, info = track.step(action)
        expected, expected_reward, *_ = free.step(action)
        np.testing.assert_array_equal(observation, expected)
        assert reward == expected_reward and not truncated
        assert terminated == info["off_track"] == (abs(float(track.state[0])) > 0.5)
        if terminated:
            break
    assert terminated


def test_track_limit_rows_and_bad_limit() -> None:
    x = torch.zeros(2, 3, 5, dtype=F64)
    x[..., 0] = torch.tensor([[-0.7, 0.0, 0.4], [0.6, -0.1, 0.5]], dtype=F64)
    g = TrackLimit(0.5, dtype=F64)(x, torch.zeros(2, 3, 1, dtype=F64))
    expected = torch.stack([x[..., 0] - 0.5, -x[..., 0] - 0.5], dim=-1)
    torch.testing.assert_close(g, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="limit: expected a positive"):
        TrackLimit(0.0)
    with pytest.raises(ValueError, match="track_limit: expected a positive"):
        CartPoleTrackEnv(track_limit=-1.0)


def test_the_constrained_expert_keeps_plans_on_the_track() -> None:
    env = CartPoleTrackEnv(track_limit=0.5)
    states = []
    for seed in range(6):
        env.reset(seed=seed)
        states.append(torch.as_tensor(env.state, dtype=F64))
    x_init = torch.stack(states)
    kwargs = {"horizon": 15, "dtype": F64}
    free = MPCExpert(CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64), 100.0, **kwargs)
    bounded = MPCExpert(
        CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64), 100.0, **kwargs,
        constraints=TrackLimit(0.5, dtype=F64),
    )  # fmt: skip
    unconstrained, constrained = free.plan(x_init), bounded.plan(x_init)
    assert float(unconstrained.x[..., 0].abs().max()) > 0.52  # the plain plans leave it
    assert constrained.info.all_converged
    assert float(constrained.x[..., 0].abs().max()) <= 0.5 + 1e-7


@pytest.mark.slow
def test_the_example_learns_the_track_limit(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "constrained_cartpole.py"),
         "--steps", "8", "--lr", "0.06", "--rollout-steps", "3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, check=True,
    )  # fmt: skip
    learned = float(result.stdout.split("learned limit ")[1].split()[0])
    assert abs(learned - 0.5) < abs(1.0 - 0.5) / 2, result.stdout
    assert "off the track: False" in result.stdout
