"""Expert datasets to and from Minari, the offline-RL dataset format of the Farama Foundation.

    from mpc_policy.agents.data.minari_io import export_minari, import_minari
    export_minari(dataset, "mpc_policy/pendulum/expert-v0")      # an ExpertDataset
    dataset = import_minari("mpc_policy/pendulum/expert-v0")     # the same ExpertDataset

A Minari episode of T steps holds T + 1 observations, T actions, rewards, terminations and
truncations, and per-observation ``infos``. Exported, the expert's part rides in the infos,
row t describing observation t: ``state`` (T + 1, n) the MPC states, ``nominal_actions``
(T + 1, H, m) and ``nominal_states`` (T + 1, H, n) the plan the expert made from state t and
``converged`` (T + 1,) its solve's convergence (row T, the final observation, was never
planned from: NaN plans, not converged). The dataset's own metadata (``datasets.py``) is
kept whole in Minari's metadata under ``"mpc_policy"``, and the environment's spec records
its physics as plain data (``params={...}``), so ``recover_environment()`` rebuilds it.

Imported, a dataset written here comes back array for array. Any other Minari dataset of a
registered system (a recorded ``gymnasium`` run, another tool's) has no plans: it imports
with horizon H = 1, its nominal actions being the actions taken, and behaviour cloning then
matches the learner's first control to them (``FirstControlObjective`` and
``imitation_objective`` in ``mpc_policy.agents.train.objectives``): the learner still plans
over its own horizon. Its states are its observations (every built-in system observes its
MPC state); actions are clipped to the system's control bound (what the environment applied).

Minari is imported only when these functions run: ``pip install "minari[create,hdf5]"``
(it needs numpy >= 2).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from torch import Tensor

from mpc_policy.envs.registry import SYSTEMS, System, get_system

from .datasets import (
    FORMAT_VERSION,
    SPLITS,
    DatasetError,
    ExpertDataset,
    _check_consistency,
    _check_schema,
)

__all__ = [
    "METADATA_KEY",
    "export_minari",
    "import_minari",
    "trainer_splits",
]

# the key of Minari's metadata under which the dataset's own metadata (JSON) is kept
METADATA_KEY = "mpc_policy"
PLAN_INFOS = ("state", "nominal_actions", "nominal_states", "converged")


def _minari() -> Any:
    try:
        import minari
    except ImportError as error:
        raise ImportError(
            'Minari datasets need minari: pip install "minari[create,hdf5]" (numpy >= 2)'
        ) from error
    return minari


def _episode_rows(episodes: np.ndarray) -> list[np.ndarray]:
    """The row indices of each episode, in order."""
    return [np.flatnonzero(episodes == e) for e in np.unique(episodes)]


def export_minari(
    dataset: ExpertDataset,
    dataset_id: str,
    *,
    plans: bool = True,
    author: str | None = None,
    description: str | None = None,
    code_permalink: str | None = None,
) -> Any:
    """Write an expert dataset as a local Minari dataset.

    Args:
        dataset: the expert dataset (``collect_dataset`` or ``load_dataset``).
        dataset_id: Minari's id, ``(namespace/)(env_name/)name-v<version>``; under
            ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``).
        plans: keep the expert's plans and states in the infos (False writes the plain
            offline-RL data only, as a dataset recorded elsewhere would be).
        author: Minari's ``author`` field.
        description: Minari's ``description`` field (default: says what the data are).
        code_permalink: Minari's ``code_permalink`` field (the code that made the data).

    Returns:
        The ``minari.MinariDataset``.
    """
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    metadata = dataset.metadata
    arrays = dataset.arrays
    seed = int(metadata["seed"])
    buffers = []
    for index, rows in enumerate(_episode_rows(arrays["episodes"])):
        last = rows[-1]
        infos: dict[str, np.ndarray] = {}
        if plans:
            nominal_actions = arrays["nominal_actions"][rows]
            nominal_states = arrays["nominal_states"][rows]
            infos = {
                "state": np.concatenate([arrays["states"][rows], arrays["next_states"][[last]]]),
                "nominal_actions": np.concatenate(
                    [nominal_actions, np.full_like(nominal_actions[:1], np.nan)]
                ),
                "nominal_states": np.concatenate(
                    [nominal_states, np.full_like(nominal_states[:1], np.nan)]
                ),
                "converged": np.append(arrays["converged"][rows], False),
            }
        buffers.append(
            EpisodeBuffer(
                id=index,
                seed=seed + int(arrays["episodes"][rows[0]]),
                observations=np.concatenate(
                    [arrays["observations"][rows], arrays["next_observations"][[last]]]
                ),
                actions=arrays["actions"][rows],
                rewards=list(arrays["rewards"][rows]),
                terminations=list(arrays["terminals"][rows]),
                truncations=list(arrays["timeouts"][rows]),
                infos=infos or None,
            )
        )
    env = gymnasium.make(
        metadata["env_id"],
        params=dict(metadata["env_params"]),
        max_episode_steps=int(metadata["episode_steps"]),
    )
    text = description or (
        f"{metadata['system']} MPC expert (horizon {metadata['expert']['horizon']}), "
        f"{len(buffers)} episodes; " + ("plans in infos" if plans else "no plans")
    )
    created = minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=env,
        algorithm_name="mpc_policy MPC expert",
        author=author,
        description=text,
        code_permalink=code_permalink,
    )
    env.close()
    if plans:
        created.storage.update_metadata({METADATA_KEY: json.dumps(metadata)})
    return created


def _default_splits(n_episodes: int) -> dict[str, int]:
    if n_episodes < 3:
        raise DatasetError(
            f"splits: a dataset of {n_episodes} episode(s) cannot give train, val and test "
            "one episode each; pass splits="
        )
    val = test = max(1, n_episodes // 10)
    return {"train": n_episodes - val - test, "val": val, "test": test}


def _system_of(dataset: Any, system: str | System | None) -> System:
    if system is not None:
        return get_system(system)
    env_spec = dataset.spec.env_spec
    env_id = None if env_spec is None else env_spec.id
    found = [s for s in SYSTEMS.values() if s.env_id == env_id]
    if not found:
        raise ValueError(
            f"system: the dataset's environment {env_id!r} is no registered system's "
            f"({sorted(s.env_id for s in SYSTEMS.values())}); pass system="
        )
    return found[0]


def import_minari(
    source: str | Any,
    *,
    system: str | System | None = None,
    splits: dict[str, int] | None = None,
) -> ExpertDataset:
    """Read a Minari dataset as an ``ExpertDataset`` for behaviour cloning.

    Args:
        source: a Minari dataset id (loaded with ``minari.load_dataset``) or a
            ``MinariDataset``.
        system: the registered system (default: the one whose Gymnasium id the dataset's
            environment has). Ignored for a dataset written by ``export_minari``.
        splits: episodes per split, in order (default: the exported ones, else about
            80/10/10 % with at least one episode each).

    Returns:
        The dataset: as exported for one written by ``export_minari`` (plans included);
        for any other, horizon 1 with the actions taken as the nominal actions
        (``metadata["expert"]["plans"]`` False).

    Raises:
        DatasetError: the data do not fit the system, or the splits the episodes.
    """
    minari = _minari()
    dataset = minari.load_dataset(source) if isinstance(source, str) else source
    name = f"minari:{dataset.spec.dataset_id}"
    episodes = list(dataset.iterate_episodes())
    stored = dataset.storage.metadata.get(METADATA_KEY)
    infos = episodes[0].infos if episodes else {}
    with_plans = stored is not None and all(key in infos for key in PLAN_INFOS)
    if with_plans:
        metadata = json.loads(stored)
        spec = get_system(metadata["system"])
    else:
        spec = _system_of(dataset, system)
        metadata = _foreign_metadata(dataset, spec, episodes)
    if splits is not None:
        metadata["splits"] = {s: int(splits[s]) for s in SPLITS}
    elif "splits" not in metadata or sum(metadata["splits"].values()) != len(episodes):
        metadata["splits"] = _default_splits(len(episodes))
    if sorted(metadata["splits"]) != sorted(SPLITS) or sum(metadata["splits"].values()) != len(
        episodes
    ):
        raise DatasetError(
            f"{name}: splits {metadata['splits']} do not add up to its {len(episodes)} episodes"
        )
    if min(metadata["splits"].values()) < 1:
        raise DatasetError(
            f"{name}: splits {metadata['splits']}: each split needs at least one episode"
        )
    arrays = _arrays(episodes, spec, with_plans, float(metadata["expert"]["control_bound"]))
    _check_schema(Path(name), arrays, int(metadata["expert"]["horizon"]))
    _check_consistency(Path(name), metadata, arrays)
    return ExpertDataset(arrays, metadata)


def _foreign_metadata(dataset: Any, spec: System, episodes: list[Any]) -> dict[str, Any]:
    env_spec = dataset.spec.env_spec
    same_env = env_spec is not None and env_spec.id == spec.env_id
    params = dict(env_spec.kwargs.get("params") or {}) if same_env else {}
    seed = None
    if episodes:
        first: dict[str, Any] = next(iter(dataset.storage.get_episode_metadata([0])), {})
        seed = first.get("seed")
    return {
        "format_version": FORMAT_VERSION,
        "system": spec.name,
        "env_id": spec.env_id,
        "env_params": dataclasses.asdict(spec.true_params(params)),
        "seed": 0 if seed is None else int(seed),
        "episode_steps": max((len(e.actions) for e in episodes), default=0),
        "expert": {
            "horizon": 1,
            "control_bound": spec.control_bound,
            "restarts": [],
            "options": {},
            "dtype": "float64",
            "plans": False,
            "source": f"minari:{dataset.spec.dataset_id}",
        },
    }


def _arrays(
    episodes: list[Any], spec: System, with_plans: bool, bound: float
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}

    def add(key: str, value: np.ndarray) -> None:
        parts.setdefault(key, []).append(value)

    for index, episode in enumerate(episodes):
        observations = np.asarray(episode.observations, dtype=np.float32)
        states_fit = observations.ndim == 2 and observations.shape[1] == spec.n_state
        if observations.ndim != 2 or not (with_plans or states_fit):
            raise DatasetError(
                f"observations: expected (T + 1, {spec.n_state}) arrays, the MPC states of "
                f"{spec.name!r}, received {observations.shape}"
            )
        steps = len(episode.actions)
        actions = np.asarray(episode.actions, dtype=np.float32).reshape(steps, spec.n_ctrl)
        add("observations", observations[:-1])
        add("next_observations", observations[1:])
        add("rewards", np.asarray(episode.rewards, dtype=np.float64))
        add("terminals", np.asarray(episode.terminations, dtype=np.bool_))
        add("timeouts", np.asarray(episode.truncations, dtype=np.bool_))
        add("episodes", np.full(steps, index, dtype=np.int64))
        if with_plans:
            infos = episode.infos
            states = np.asarray(infos["state"], dtype=np.float64)
            add("actions", actions)
            add("states", states[:-1])
            add("next_states", states[1:])
            add("nominal_actions", np.asarray(infos["nominal_actions"], np.float64)[:-1])
            add("nominal_states", np.asarray(infos["nominal_states"], np.float64)[:-1])
            add("converged", np.asarray(infos["converged"], dtype=np.bool_)[:-1])
        else:
            states = observations.astype(np.float64)
            applied = np.clip(actions, -bound, bound)
            add("actions", applied)
            add("states", states[:-1])
            add("next_states", states[1:])
            add("nominal_actions", applied.astype(np.float64)[:, None, :])
            add("nominal_states", states[:-1, None, :])
            add("converged", np.ones(steps, dtype=np.bool_))
    return {key: np.concatenate(values) for key, values in parts.items()}


def trainer_splits(dataset: ExpertDataset) -> dict[str, dict[str, Tensor]]:
    """The ``Trainer``'s splits: per split x (N, n) states, u (N, H, m) nominal actions,
    x_plan (N, H, n) planned states, float64."""
    splits = {}
    for name in SPLITS:
        data = dataset.split(name).tensors()
        splits[name] = {
            "x": data["states"],
            "u": data["nominal_actions"],
            "x_plan": data["nominal_states"],
        }
    return splits
