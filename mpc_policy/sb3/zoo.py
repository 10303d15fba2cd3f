"""rl-baselines3-zoo's hyperparameter tuning (``-optimize``) for the MPC actor.

The zoo's own samplers tune an MLP actor: they return a new ``policy_kwargs`` (``net_arch``,
``activation_fn``) that replaces the experiment's whole, so the MPC's model (``env_id``) and
``initial_values`` are lost and the MPC policy refuses the actor layers. The samplers here
tune what an MPC actor has instead, and keep the rest of the experiment's ``policy_kwargs``:

    horizon        T in {5, 10, 15, 20, 25}
    learn          the experiment's own ``learn``, "cost", "dynamics" or "cost+dynamics"
    learning_rate  log-uniform in [1e-3, 1e-1] (the MPC's parameters are few and physical)
    gamma          1 - log-uniform in [1e-3, 1e-1]

The experiment's ``policy_kwargs`` come from the zoo's study: the zoo stores every default
hyperparameter, as text, in the study's user attributes before the first trial; they are
read back as Python literals (so ``policy_kwargs`` must hold plain data: names, numbers,
lists, dicts). Experiments whose policy is not an MPC policy keep the zoo's own samplers.

Use: import this module in the zoo's process, which registers the samplers for PPO, A2C,
TRPO, SAC, TD3 and TQC (``register_samplers``); the zoo's ``--gym-packages`` does it:

    python -m rl_zoo3.train --algo ppo --env mpc_policy/Pendulum-v0 \\
        --gym-packages mpc_policy.sb3.zoo --conf-file configs/zoo/ppo.yml -optimize

Needs ``rl_zoo3`` (the ``zoo`` extra; imported by this module, not by ``mpc_policy.sb3``).
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "HORIZONS",
    "LEARNING_RATES",
    "LEARN_CHOICES",
    "ONE_MINUS_GAMMA",
    "convert_mpc_params",
    "experiment_policy_kwargs",
    "is_mpc_experiment",
    "register_samplers",
    "sample_mpc_params",
]

HORIZONS = (5, 25, 5)  # low, high, step
LEARNING_RATES = (1e-3, 1e-1)
ONE_MINUS_GAMMA = (1e-3, 1e-1)
LEARN_CHOICES = ("cost", "dynamics", "cost+dynamics")
ON_POLICY = ("ppo", "a2c", "trpo")
OFF_POLICY = ("sac", "td3", "tqc")
# what the zoo's `str(cls)` of a policy class looks like
_CLASS_TEXT = re.compile(r"<class '([\w.]+)'>")

Sampler = Callable[[Any, int, int, dict], dict[str, Any]]


def experiment_policy_kwargs(trial: Any) -> dict[str, Any]:
    """The experiment's ``policy_kwargs`` (from the zoo YAML, already evaluated by the zoo),
    read back from the study's user attributes, where the zoo stores them as text.

    Args:
        trial: the optuna trial the zoo's objective is sampling.

    Raises:
        ValueError: the stored text is not a Python literal (a class or a module in them).
    """
    text = trial.study.user_attrs.get("policy_kwargs")
    if text is None:
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise ValueError(
            "policy_kwargs: the MPC sampler keeps the experiment's policy_kwargs in every trial "
            "and reads them back from the zoo's study as Python literals; expected plain data "
            f"(names, numbers, lists, dicts), received {text}"
        ) from error
    if not isinstance(value, dict):
        raise ValueError(f"policy_kwargs: expected a dict, received {text}")
    return value


def is_mpc_experiment(trial: Any) -> bool:
    """Whether the experiment's policy (the study's "policy" user attribute, the zoo's text
    of the class) is one of this package's policies or derives from one."""
    match = _CLASS_TEXT.fullmatch(str(trial.study.user_attrs.get("policy", "")))
    if match is None:  # an SB3 alias such as "MlpPolicy"
        return False
    module_name, _, class_name = match.group(1).rpartition(".")
    try:
        policy = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False
    return any(cls.__module__.startswith("mpc_policy.sb3.") for cls in policy.__mro__)


def sample_mpc_params(trial: Any, policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Sample the MPC's knobs and the algorithm's learning rate and discount.

    Args:
        trial: an optuna trial.
        policy_kwargs: the experiment's policy kwargs; kept, with ``horizon`` and ``learn``
            replaced by the sampled ones.

    Returns:
        ``{"learning_rate", "gamma", "policy_kwargs"}`` for the algorithm's constructor.
    """
    low, high, step = HORIZONS
    horizon = trial.suggest_int("horizon", low, high, step=step)
    own = "+".join(policy_kwargs.get("learn", ["cost"]))
    learn = trial.suggest_categorical("learn", list(dict.fromkeys((own, *LEARN_CHOICES))))
    learning_rate = trial.suggest_float("learning_rate", *LEARNING_RATES, log=True)
    one_minus_gamma = trial.suggest_float("one_minus_gamma", *ONE_MINUS_GAMMA, log=True)
    trial.set_user_attr("gamma", 1 - one_minus_gamma)
    return {
        "learning_rate": learning_rate,
        "gamma": 1 - one_minus_gamma,
        "policy_kwargs": {**policy_kwargs, "horizon": horizon, "learn": learn.split("+")},
    }


def convert_mpc_params(params: dict[str, Any]) -> dict[str, Any]:
    """The zoo's converter of a stored trial's parameters (``--trial-id``): the MPC
    sampler's trials are refused with what to do, the others go to the zoo's converter."""
    raise ValueError(
        f"--trial-id: the MPC sampler's trial {params} changes policy_kwargs, which the zoo "
        "cannot rebuild from a stored trial; put horizon=... and learn=[...] into the YAML's "
        "policy_kwargs and learning_rate, gamma (= 1 - one_minus_gamma) as its keys"
    )


def _mpc_sampler(original: Sampler) -> Sampler:
    def sample(trial: Any, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
        if not is_mpc_experiment(trial):
            return original(trial, n_actions, n_envs, additional_args)
        return sample_mpc_params(trial, experiment_policy_kwargs(trial))

    sample.__name__ = f"sample_mpc_{getattr(original, '__name__', 'params')}"
    sample.__doc__ = "The MPC's sampler for MPC policies, else the zoo's " + original.__name__
    return sample


def _mpc_converter(original: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable:
    def convert(params: dict[str, Any]) -> dict[str, Any]:
        if "horizon" in params:
            return convert_mpc_params(params)
        return original(params)

    return convert


def register_samplers() -> None:
    """Make the zoo's samplers of PPO, A2C, TRPO, SAC, TD3 and TQC sample the MPC's knobs for
    MPC policies (other policies keep the zoo's samplers); importing this module does it.

    Raises:
        ImportError: rl_zoo3 is not installed.
    """
    try:
        from rl_zoo3 import hyperparams_opt
    except ImportError as error:
        raise ImportError(
            "mpc_policy.sb3.zoo needs rl-baselines3-zoo: pip install 'mpc-policy[zoo]'"
        ) from error
    # the zoo looks both up by algorithm name at each trial (ExperimentManager.objective)
    samplers: dict[str, Any] = hyperparams_opt.HYPERPARAMS_SAMPLER
    converters: dict[str, Any] = getattr(hyperparams_opt, "HYPERPARAMS_CONVERTER", {})
    for algo in (*ON_POLICY, *OFF_POLICY):
        sampler = samplers.get(algo)
        if sampler is None or getattr(sampler, "__name__", "").startswith("sample_mpc_"):
            continue  # not in this zoo version, or registered already
        samplers[algo] = _mpc_sampler(sampler)
        if algo in converters:
            converters[algo] = _mpc_converter(converters[algo])


register_samplers()
