"""Experiment configuration: one YAML file per experiment, read into frozen dataclasses.

A file holds the sections ``data``, ``model``, ``train`` and ``evaluate`` (each optional,
defaults below) plus ``name`` and ``system`` (a registered system's name,
``mpc_policy.envs.registry``), and optionally named ``profiles`` whose entries override the
top level (e.g. a ``quick`` profile with a tiny budget); command-line overrides
``section.key=value`` apply last (``mpc_policy.agents.yaml_profiles``). Every key is checked:
an unknown key or a value of the wrong type is a ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from mpc_policy.envs.registry import get_system
from mpc_policy.options import MPCOptions

from .yaml_profiles import read_profile

__all__ = [
    "METHODS",
    "DataConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "load_config",
]

# the paper's names (section 5.3): what the learner fits and how
Method = Literal["mpc.dx", "mpc.cost", "mpc.cost.dx", "sysid", "nn"]
METHODS: tuple[str, ...] = get_args(Method)
MAX_SEED = 2**32 - 1  # a range every consumer of a seed accepts (numpy's legacy seed: 32 bits)


@dataclass(frozen=True)
class DataConfig:
    """Expert data. ``episode_steps = 1`` is the paper's setting: each trajectory is one
    expert plan from a random start state; longer episodes record the expert acting in
    receding horizon (one sample per step). ``path`` None: ``<output_dir>/dataset.npz``."""

    n_train: int = 100
    n_val: int = 10
    n_test: int = 10
    episode_steps: int = 1
    seed: int = 0
    horizon: int = 20
    env_params: dict[str, float] = field(default_factory=dict)
    expert_restarts: list[float] = field(default_factory=list)
    expert_options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The learner. ``dynamics_init`` sets the learner's physical parameters (by
    ``nn.Parameter`` name); ``cost_init`` {"weights": [...], "goal": [...]} its cost (the
    task's cost if None); ``alternate_every`` K > 0 updates the cost's goal and weights in
    turn, K epochs each (the paper found learning both at once unstable; None or 0: both)."""

    method: Method = "mpc.dx"
    dynamics_init: dict[str, float] = field(default_factory=dict)
    cost_init: dict[str, list[float]] | None = None
    alternate_every: int | None = 10
    solver: dict[str, Any] = field(default_factory=dict)
    hidden_size: int = 256


@dataclass(frozen=True)
class TrainConfig:
    """Optimization. ``optimizer``/``lr`` None take the paper's choice for the method:
    RMSprop (lr 1e-2, alpha 0.5) for the MPC methods and sysid, Adam (lr 1e-4) for nn.
    ``warm_start``: each sample's solve starts from its previous solution, reset to zeros
    every ``warm_start_reset`` epochs (the paper's code: 50). ``n_train`` uses only the
    first n training trajectories. ``eval_every``: the validation and test losses are
    computed every this many epochs (and after the last); ``patience``: stop once this many
    epochs have passed since the validation loss last fell by more than ``min_delta``
    (relative) below its best (None: train all ``epochs``), except that the first
    ``lr_drops`` times the learning rate is divided by 10 instead and training goes on
    (needs ``scheduler: none``)."""

    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["rmsprop", "adam"] | None = None
    lr: float | None = None
    alpha: float = 0.5
    scheduler: Literal["none", "cosine"] = "none"
    seed: int = 0
    warm_start: bool = True
    warm_start_reset: int = 50
    n_train: int | None = None
    eval_every: int = 1
    patience: int | None = None
    min_delta: float = 0.0
    lr_drops: int = 0
    progress: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    """Rollouts of the trained policy: success means the pole ends within
    ``success_angle`` radians of upright; a GIF of the first episode when ``gif``."""

    episodes: int = 10
    seed: int = 10_000
    max_episode_steps: int | None = None
    success_angle: float = 0.2
    compare_expert: bool = True
    gif: bool = False
    gif_every: int = 2


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. ``output_dir`` None: ``runs/<name>`` (``runs/<name>-<profile>``
    under a profile). ``imports``: modules imported before ``system`` is looked up, e.g.
    one that registers a system of your own (``mpc_policy.envs.registry``)."""

    name: str
    system: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    output_dir: str | None = None
    imports: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        get_system(self.system)  # a registered system (``mpc_policy.envs.registry``)
        positive = {
            "data.n_train": self.data.n_train,
            "data.episode_steps": self.data.episode_steps,
            "data.horizon": self.data.horizon,
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "train.warm_start_reset": self.train.warm_start_reset,
            "train.eval_every": self.train.eval_every,
            "evaluate.episodes": self.evaluate.episodes,
            "evaluate.gif_every": self.evaluate.gif_every,
        }
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"{key}: expected an integer >= 1, received {value}")
        seeds = {
            "data.seed": self.data.seed,
            "train.seed": self.train.seed,
            "evaluate.seed": self.evaluate.seed,
        }
        for key, value in seeds.items():
            if not 0 <= value <= MAX_SEED:
                raise ValueError(
                    f"{key}: expected an integer in [0, 2**32 - 1] (a seed), received {value}"
                )
        for key, value in (("data.n_val", self.data.n_val), ("data.n_test", self.data.n_test)):
            if value < 1:
                raise ValueError(f"{key}: expected an integer >= 1 (a split), received {value}")
        if self.train.lr is not None and not 0 < self.train.lr < math.inf:
            raise ValueError(
                f"train.lr: expected a finite positive float, received {self.train.lr}"
            )
        if self.train.patience is not None and self.train.patience < 1:
            raise ValueError(
                f"train.patience: expected None or an integer >= 1, received {self.train.patience}"
            )
        if not 0 <= self.train.min_delta < 1:
            raise ValueError(
                f"train.min_delta: expected a float in [0, 1), received {self.train.min_delta}"
            )
        if self.train.lr_drops < 0:
            raise ValueError(
                f"train.lr_drops: expected an integer >= 0, received {self.train.lr_drops}"
            )
        if self.train.lr_drops and (self.train.patience is None or self.train.scheduler != "none"):
            raise ValueError(
                "train.lr_drops: expected train.patience set and train.scheduler 'none' "
                f"(the drops happen on patience), received patience {self.train.patience} "
                f"and scheduler {self.train.scheduler!r}"
            )
        if not 0 < self.train.alpha < 1:
            raise ValueError(
                f"train.alpha: expected a float in (0, 1), received {self.train.alpha}"
            )
        if not 0 < self.evaluate.success_angle < math.inf:
            raise ValueError(
                "evaluate.success_angle: expected a finite positive float, received "
                f"{self.evaluate.success_angle}"
            )
        for key, options in (
            ("model.solver", self.model.solver),
            ("data.expert_options", self.data.expert_options),
        ):
            try:
                MPCOptions.from_kwargs(**options)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{key}: {error}") from None
        if self.train.n_train is not None and not 1 <= self.train.n_train <= self.data.n_train:
            raise ValueError(
                f"train.n_train: expected 1..data.n_train ({self.data.n_train}), "
                f"received {self.train.n_train}"
            )
        if self.model.cost_init is not None and set(self.model.cost_init) != {"weights", "goal"}:
            raise ValueError(
                "model.cost_init: expected the keys ['goal', 'weights'], received "
                f"{sorted(self.model.cost_init)}"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    @property
    def dataset_path(self) -> Path:
        return Path(self.data.path) if self.data.path else self.run_dir / "dataset.npz"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """``value`` converted to ``annotation`` (int -> float allowed), else ValueError."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in get_args(annotation):
            try:
                return _check_value(key, value, option)
            except ValueError:
                continue
        raise ValueError(f"{key}: expected {annotation}, received {value!r}")
    if origin is Literal:
        if value in get_args(annotation):
            return value
        raise ValueError(f"{key}: expected one of {list(get_args(annotation))}, received {value!r}")
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation in (int, bool, str):
        if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = get_args(annotation)
            return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, item = get_args(annotation)
            return {str(k): _check_value(f"{key}.{k}", v, item) for k, v in value.items()}
    elif annotation is Any:
        return value
    elif dataclasses.is_dataclass(annotation):
        if isinstance(value, dict):
            return _from_dict(key, annotation, value)
    raise ValueError(
        f"{key}: expected {getattr(annotation, '__name__', annotation)}, received {value!r}"
    )


def _from_dict(prefix: str, cls: Any, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"{where}{unknown[0]}: unknown config key; the keys are {names}")
    kwargs = {
        name: _check_value(f"{prefix}.{name}" if prefix else name, value, hints[name])
        for name, value in values.items()
    }
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{prefix or 'config'}: missing required key(s) {missing}")
    return cls(**kwargs)


def _import(path: str | Path, modules: Any) -> None:
    """Import the config's ``imports`` (the modules that register its system)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ValueError(f"config {path}: imports: expected a list of module names")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(
                f"config {path}: imports: cannot import {module!r} ({error}); it must be "
                "installed or on PYTHONPATH"
            ) from None


def load_config(
    path: str | Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Read an experiment file, apply a profile and ``section.key=value`` overrides.

    Args:
        path: the YAML file.
        profile: a name under the file's ``profiles`` (None: the top level as written).
        overrides: e.g. ``["train.epochs=2", "evaluate.gif=true"]``.

    Returns:
        The validated ``ExperimentConfig``.
    """
    raw, chosen = read_profile(path, profile, overrides)
    _import(path, raw.get("imports") or [])
    if chosen is not None and "output_dir" not in chosen and raw.get("output_dir") is None:
        raw["output_dir"] = f"runs/{raw.get('name', Path(path).stem)}-{profile}"
    try:
        config: ExperimentConfig = _from_dict("", ExperimentConfig, raw)
    except ValueError as error:
        raise ValueError(f"config {path}: {error}") from None
    return config
