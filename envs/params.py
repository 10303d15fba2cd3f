"""Physical parameters of the three systems, as frozen dataclasses with validated values.

The defaults are the true values of the paper's experiments (Amos et al., 2018, sections 5.3
and 5.4). The dynamics modules copy the physical constants (gravity, masses, lengths and, for
the windy pendulum, damping and wind) into ``nn.Parameter``s so that an MPC can learn them;
the integration step ``dt``, the velocity clip and the actuator limit stay plain floats.
A value out of range raises ``ValueError`` naming the field.

Wherever a system takes ``params=`` (dynamics modules and environments), a mapping of field
names to values works too (``{"mass": 1.2}``, the other fields at their defaults): that is
what ``gymnasium.make(id, params=...)`` stores in the environment's spec, so specs written as
JSON (``EnvSpec.to_json``), rl-baselines3-zoo's ``env_kwargs`` and Minari's recorded specs
rebuild the same physics. ``as_params`` does the conversion.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["CartPoleParams", "PendulumParams", "WindyPendulumParams", "as_params"]

P = TypeVar("P")


def as_params(cls: type[P], value: P | Mapping[str, Any] | None, name: str = "params") -> P:
    """The parameters ``value`` as an instance of the dataclass ``cls``.

    Args:
        cls: the parameter dataclass, e.g. ``PendulumParams``.
        value: None (the defaults, ``cls()``), an instance of ``cls`` (returned as it is), or
            a mapping from some of its field names to values (the others at their defaults).
        name: the argument's name in error messages.

    Raises:
        TypeError: ``value`` is neither, or a mapping's key is not a string.
        ValueError: a mapping names a key that is not a field of ``cls`` (the message lists
            the valid ones), or a value is out of range.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name}: expected a {cls.__name__} or a mapping of its fields, "
            f"received {type(value).__name__}"
        )
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise TypeError(f"{name}: expected string keys, received {bad_keys!r}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(
            f"{name}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {cls.__name__}; the valid keys are {valid}"
        )
    return cls(**value)


def _check(name: str, value: object, *, lower: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a real number, received {value!r}")
    bound_ok = value > lower if strict else value >= lower
    if not math.isfinite(value) or not bound_ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name}: expected a finite number {relation} {lower}, received {value!r}")


@dataclass(frozen=True)
class PendulumParams:
    """Pendulum-v1's constants (a uniform rod pivoting at one end, angle 0 upright).

    Attributes:
        gravity: gravitational acceleration g (m s^-2), >= 0.
        mass: rod mass m (kg), > 0.
        length: rod length l (m), > 0.
        dt: integration step (s), > 0.
        max_speed: the angular velocity is clipped to [-max_speed, max_speed] (rad s^-1)
            after each step, as in Gymnasium; None disables the clip.
        max_torque: actuator limit: the torque lies in [-max_torque, max_torque] (N m).
    """

    gravity: float = 10.0
    mass: float = 1.0
    length: float = 1.0
    dt: float = 0.05
    max_speed: float | None = 8.0
    max_torque: float = 2.0

    def __post_init__(self) -> None:
        _check("gravity", self.gravity, lower=0.0, strict=False)
        for name in ("mass", "length", "dt", "max_torque"):
            _check(name, getattr(self, name), lower=0.0, strict=True)
        if self.max_speed is not None:
            _check("max_speed", self.max_speed, lower=0.0, strict=True)


@dataclass(frozen=True)
class WindyPendulumParams(PendulumParams):
    """The pendulum plus viscous damping at the pivot and a steady horizontal wind.

    Attributes:
        damping: viscous friction coefficient b (N m s rad^-1), >= 0: torque -b th_dot.
        wind: horizontal force F_w (N) on the tip, positive to the right (+x); any sign.
            With the defaults (b = 0.1, F_w = 1) damping takes 0.3 rad s^-2 per rad s^-1
            of velocity, the unforced balance point near the top tilts by
            atan(2 F_w / (m g)), about 11 degrees, and holding the pendulum upright takes
            1 N m, half the actuator limit; the best simple-pendulum fit leaves about a fifth
            of the angular acceleration unexplained. Much more damping (0.2 and up) and the
            horizon-20 expert no longer swings up from hanging.
    """

    damping: float = 0.1
    wind: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("damping", self.damping, lower=0.0, strict=False)
        _check("wind", self.wind, lower=-math.inf, strict=True)


@dataclass(frozen=True)
class CartPoleParams:
    """Cart-pole constants (Gymnasium's CartPole-v1 with a continuous, larger force).

    Attributes:
        gravity: gravitational acceleration g (m s^-2), >= 0.
        cart_mass: cart mass (kg), > 0.
        pole_mass: pole mass (kg), > 0.
        half_length: half the pole length (m), > 0 (Gymnasium's ``length``).
        dt: explicit Euler step (s), > 0.
        max_force: actuator limit: the force on the cart lies in [-max_force, max_force] (N).
    """

    gravity: float = 9.8
    cart_mass: float = 1.0
    pole_mass: float = 0.1
    half_length: float = 0.5
    dt: float = 0.05
    max_force: float = 100.0

    def __post_init__(self) -> None:
        _check("gravity", self.gravity, lower=0.0, strict=False)
        for name in ("cart_mass", "pole_mass", "half_length", "dt", "max_force"):
            _check(name, getattr(self, name), lower=0.0, strict=True)
