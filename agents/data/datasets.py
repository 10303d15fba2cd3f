"""Expert datasets: collected with an environment's MPC expert, stored as ``.npz``.

A dataset holds N steps of E episodes under the conventional offline-RL keys
(``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``,
``next_observations``) plus what imitation of an MPC needs: the expert's nominal action
sequences u_{1:T}(x_t) (N, T, m), the MPC states x_t it planned from, and the planned states
(the true dynamics rolled out under the nominal actions) for system identification. The
episodes are split in order: the first ``n_train`` are training, then validation, then test.
A ``metadata`` JSON string records the environment, its parameters, the seed, the expert's
settings and the split. Loading checks all of it and names what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpc_policy.envs.registry import SYSTEMS, System, get_system

from .atomic import atomic_write
from .expert import MPCExpert
from .rollouts import run_episodes

__all__ = ["FORMAT_VERSION", "DatasetError", "ExpertDataset", "collect_dataset", "load_dataset"]

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# key: (dtype, shape with symbols N steps, T horizon, n state, m control, o observation)
SCHEMA: dict[str, tuple[type, tuple[str, ...]]] = {
    "observations": (np.float32, ("N", "o")),
    "next_observations": (np.float32, ("N", "o")),
    "actions": (np.float32, ("N", "m")),
    "rewards": (np.float64, ("N",)),
    "terminals": (np.bool_, ("N",)),
    "timeouts": (np.bool_, ("N",)),
    "nominal_actions": (np.float64, ("N", "T", "m")),
    "nominal_states": (np.float64, ("N", "T", "n")),
    "states": (np.float64, ("N", "n")),
    "next_states": (np.float64, ("N", "n")),
    "episodes": (np.int64, ("N",)),
    "converged": (np.bool_, ("N",)),
}
METADATA_KEYS = (
    "format_version",
    "system",
    "env_id",
    "env_params",
    "seed",
    "episode_steps",
    "splits",
    "expert",
)


class DatasetError(ValueError):
    """A dataset file that is corrupted, incomplete or not the one expected."""


@dataclass(frozen=True)
class ExpertDataset:
    """The arrays of ``SCHEMA`` (``dataset["observations"]``, ...) and the metadata dict."""

    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return int(self.arrays["episodes"].shape[0])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def split(self, name: str, n_episodes: int | None = None) -> ExpertDataset:
        """The steps of one split ("train", "val", "test"), optionally its first episodes."""
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, received {name!r}")
        counts = self.metadata["splits"]
        first = sum(counts[s] for s in SPLITS[: SPLITS.index(name)])
        count = counts[name] if n_episodes is None else min(n_episodes, counts[name])
        episodes = self.arrays["episodes"]
        rows = (episodes >= first) & (episodes < first + count)
        return ExpertDataset({k: v[rows] for k, v in self.arrays.items()}, self.metadata)

    def tensors(self) -> dict[str, torch.Tensor]:
        """States (N, n), nominal actions (N, T, m) and nominal states (N, T, n) in float64."""
        keys = ("states", "nominal_actions", "nominal_states")
        return {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k])) for k in keys}

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` atomically (``mpc_policy.agents.data.atomic``)."""
        payload: dict[str, Any] = {"metadata": np.array(json.dumps(self.metadata)), **self.arrays}
        return atomic_write(path, lambda file: np.savez_compressed(file, **payload))


def _rollout_plans(expert: MPCExpert, states: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """(N, T, n) states of the expert's plans: its dynamics rolled out under the plans."""
    x = torch.from_numpy(states).to(expert.dtype)
    u = torch.from_numpy(nominal).to(expert.dtype)
    planned = [x]
    with torch.no_grad():
        for t in range(u.shape[1] - 1):
            planned.append(expert.dynamics(planned[-1], u[:, t]))
    return torch.stack(planned, dim=1).numpy().astype(np.float64)


def collect_dataset(
    system: str | System,
    splits: dict[str, int],
    *,
    seed: int = 0,
    episode_steps: int = 1,
    horizon: int = 20,
    env_params: dict[str, float] | None = None,
    expert_restarts: list[float] | tuple[float, ...] = (),
    expert_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> ExpertDataset:
    """Run the system's MPC expert (``mpc_policy.agents.data.expert``) and gather its steps.

    Args:
        system: a registered system (``mpc_policy.envs.registry``), by name or record.
        splits: episodes per split, {"train": ..., "val": ..., "test": ...}.
        seed: episode i is reset with seed + i.
        episode_steps: steps per episode (1: one plan from each start state, the paper's).
        horizon: the expert's planning horizon T.
        env_params: overrides of the system's physical parameters (for the environment and
            the expert alike).
        expert_restarts: the expert's multi-start levels (``MPCExpert``'s ``restarts``).
        expert_options: the expert's ``MPCOptions`` fields.
        progress: show a progress bar over the expert's steps.
    """
    if set(splits) != set(SPLITS) or any(splits[s] < 1 for s in SPLITS):
        raise ValueError(
            f"splits: expected a positive count for each of {SPLITS}, received {splits}"
        )
    spec = get_system(system)
    params = spec.true_params(env_params)
    options = dict(expert_options or {})
    expert = MPCExpert.for_system(
        spec, horizon, env_params=env_params, restarts=tuple(expert_restarts), **options
    )
    rollouts = run_episodes(
        expert,
        spec.env_id,
        sum(splits[s] for s in SPLITS),
        seed=seed,
        inputs="state",
        n_state=expert.n_state,
        max_episode_steps=episode_steps,
        env_kwargs={"params": params},
        progress=progress,
        description=f"collect {spec.name} expert",
    )
    arrays = {
        "observations": rollouts.observations,
        "next_observations": rollouts.next_observations,
        "actions": rollouts.actions,
        "rewards": rollouts.rewards.astype(np.float64),
        "terminals": rollouts.terminated,
        "timeouts": rollouts.truncated,
        "nominal_actions": rollouts.nominal_actions.astype(np.float64),
        "nominal_states": _rollout_plans(expert, rollouts.states, rollouts.nominal_actions),
        "states": rollouts.states.astype(np.float64),
        "next_states": rollouts.next_states.astype(np.float64),
        "episodes": rollouts.episodes.astype(np.int64),
        "converged": rollouts.converged,
    }
    metadata = {
        "format_version": FORMAT_VERSION,
        "system": spec.name,
        "env_id": spec.env_id,
        "env_params": dataclasses.asdict(params),
        "seed": seed,
        "episode_steps": episode_steps,
        "splits": {s: int(splits[s]) for s in SPLITS},
        "expert": {
            "horizon": horizon,
            "control_bound": spec.control_bound,
            "restarts": [float(r) for r in expert_restarts],
            "options": options,
            "dtype": "float64",
        },
    }
    return ExpertDataset(arrays, metadata)


def _check_metadata(path: Path, metadata: dict[str, Any], expect: dict[str, Any]) -> None:
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise DatasetError(f"{path}: metadata lacks the field(s) {missing}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version {metadata['format_version']!r}, this code reads "
            f"{FORMAT_VERSION}"
        )
    if not isinstance(metadata["expert"], dict) or "horizon" not in metadata["expert"]:
        raise DatasetError(f"{path}: metadata 'expert' must record the expert's 'horizon'")
    splits = metadata["splits"]
    if not isinstance(splits, dict) or sorted(splits) != sorted(SPLITS):
        raise DatasetError(f"{path}: metadata 'splits' must give {list(SPLITS)}, has {splits!r}")
    for key, wanted in expect.items():
        found = metadata.get(key, metadata["expert"].get(key))
        if found != wanted:
            raise DatasetError(
                f"{path}: metadata {key!r} is {found!r} but {wanted!r} was expected; "
                "collect a new dataset for this experiment"
            )


def _check_consistency(path: Path, metadata: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """The metadata agree with each other and with the arrays: system and environment,
    state and control sizes, actions within the recorded control bound."""
    system = metadata["system"]
    if system not in SYSTEMS:
        raise DatasetError(
            f"{path}: metadata 'system' is {system!r}, expected one of {sorted(SYSTEMS)}"
        )
    spec = SYSTEMS[system]
    if metadata["env_id"] != spec.env_id:
        raise DatasetError(
            f"{path}: metadata 'env_id' is {metadata['env_id']!r}, but the system "
            f"{system!r} is {spec.env_id!r}"
        )
    for key, symbol, size in (("states", "n", spec.n_state), ("actions", "m", spec.n_ctrl)):
        if arrays[key].shape[-1] != size:
            raise DatasetError(
                f"{path}: {key!r} has shape {arrays[key].shape}, but the system {system!r} "
                f"has {symbol} = {size}"
            )
    bound = metadata["expert"].get("control_bound")
    if isinstance(bound, int | float) and not isinstance(bound, bool):
        for key in ("actions", "nominal_actions"):
            largest = float(np.abs(arrays[key]).max(initial=0.0))
            if largest > bound * (1 + 1e-5):
                raise DatasetError(
                    f"{path}: {key!r} reaches |u| = {largest:g}, beyond the recorded "
                    f"control bound {bound:g} of metadata 'expert'"
                )


def _check_schema(path: Path, contents: dict[str, np.ndarray], horizon: int) -> None:
    """Each array of ``SCHEMA`` has its dtype and shape, the sizes agree across arrays
    (N steps, T = the expert's horizon, n, m, o) and the floats are finite."""
    n_steps = contents["episodes"].shape[0] if contents["episodes"].ndim == 1 else -1
    sizes: dict[str, int] = {"N": n_steps, "T": horizon}
    for key, (dtype, symbols) in SCHEMA.items():
        array = contents[key]
        if array.dtype != dtype:
            raise DatasetError(
                f"{path}: {key!r} has dtype {array.dtype}, expected {np.dtype(dtype)}"
            )
        if array.ndim != len(symbols):
            raise DatasetError(
                f"{path}: {key!r} has shape {array.shape}, expected ({', '.join(symbols)})"
            )
        for axis, symbol in enumerate(symbols):
            size = sizes.setdefault(symbol, array.shape[axis])
            if array.shape[axis] != size:
                raise DatasetError(
                    f"{path}: {key!r} has shape {array.shape}, but axis {axis} ({symbol}) "
                    f"should be {size} like the other arrays"
                )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise DatasetError(f"{path}: {key!r} contains NaN or Inf")


def load_dataset(path: str | Path, expect: dict[str, Any] | None = None) -> ExpertDataset:
    """Read and validate a dataset file.

    Args:
        path: the ``.npz`` file.
        expect: metadata values that must match, e.g. ``{"system": "pendulum",
            "horizon": 20}`` (keys of the metadata or of its ``expert`` record).

    Raises:
        DatasetError: naming the problem (unreadable file, missing key, wrong dtype or
            shape, inconsistent episodes or splits, metadata mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file; run `mpc-policy collect` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except Exception as error:  # zipfile, OSError, ValueError: all mean a corrupted file
        raise DatasetError(f"{path}: not a readable .npz file ({error})") from error
    if "metadata" not in contents:
        raise DatasetError(f"{path}: no 'metadata' record")
    try:
        metadata = json.loads(str(contents.pop("metadata")))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: 'metadata' is not valid JSON ({error})") from error
    if not isinstance(metadata, dict):
        raise DatasetError(f"{path}: 'metadata' must be a JSON object")
    _check_metadata(path, metadata, expect or {})
    missing = [k for k in SCHEMA if k not in contents]
    if missing:
        raise DatasetError(f"{path}: missing array(s) {missing}")
    unknown = sorted(set(contents) - set(SCHEMA))
    if unknown:
        raise DatasetError(
            f"{path}: unknown array(s) {unknown}; a dataset holds exactly {sorted(SCHEMA)} "
            "and 'metadata' (remove the others)"
        )
    _check_schema(path, contents, metadata["expert"]["horizon"])
    _check_consistency(path, metadata, contents)
    n_episodes = sum(metadata["splits"][s] for s in SPLITS)
    episodes = contents["episodes"]
    if (
        episodes.size == 0
        or np.any(np.diff(episodes) < 0)
        or set(np.unique(episodes)) != set(range(n_episodes))
    ):
        raise DatasetError(
            f"{path}: 'episodes' must number the {n_episodes} episodes of the splits "
            f"{metadata['splits']} in order"
        )
    return ExpertDataset(contents, metadata)
