"""The ``mpc-policy`` command: collect expert data, train, evaluate, or all three.

    mpc-policy run configs/pendulum_dx.yaml                  # collect, train, evaluate
    mpc-policy run configs/pendulum_dx.yaml --profile quick  # the same on a tiny budget
    mpc-policy collect CONFIG [--restart]                    # --restart: collect afresh
    mpc-policy train CONFIG [--restart] [--stop-after N]     # resumes from its checkpoint
    mpc-policy evaluate CONFIG [--checkpoint best|last|PATH] [--gif]
    mpc-policy run CONFIG [--restart] [--gif]
    mpc-policy warmup [--dtype float32|float64]              # compile the solver's kernels

Every subcommand but warmup takes ``--profile NAME`` and ``--set section.key=value``
(repeatable). The learning stack (torch, the solver) is imported only once a command runs, so
``--help`` is quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpc-policy",
        description="Imitation learning with differentiable MPC (Amos et al., 2018).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("config", help="experiment YAML file, e.g. configs/pendulum_dx.yaml")
    common.add_argument("--profile", help="a profile of the config file, e.g. quick")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (YAML syntax), e.g. --set train.epochs=5",
    )
    sub = commands.add_parser("collect", parents=[common], help="collect the expert dataset")
    sub.add_argument(
        "--restart", "--overwrite", dest="restart", action="store_true",
        help="collect afresh, replacing an existing dataset",
    )  # fmt: skip
    restart_help = "discard checkpoints and logs"
    apply_help = "resume even with changed optimizer/scheduler settings, applying them"
    sub = commands.add_parser("train", parents=[common], help="behaviour cloning (resumable)")
    sub.add_argument("--restart", action="store_true", help=restart_help)
    sub.add_argument("--apply-new-settings", action="store_true", help=apply_help)
    sub.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs in this call (rerun to resume)",
    )
    gif_help = "render the first episode to rollout.gif in the run folder"
    sub = commands.add_parser("evaluate", parents=[common], help="roll the policy out")
    sub.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file")
    sub.add_argument("--gif", action="store_true", help=gif_help)
    sub = commands.add_parser("run", parents=[common], help="collect, train and evaluate")
    sub.add_argument("--restart", action="store_true", help=restart_help)
    sub.add_argument("--apply-new-settings", action="store_true", help=apply_help)
    sub.add_argument("--gif", action="store_true", help=gif_help)
    sub = commands.add_parser("warmup", help="compile the solver's CPU kernels ahead of use")
    sub.add_argument(
        "--dtype", dest="dtypes", action="append", choices=["float32", "float64"],
        help="compile for this dtype only (repeatable); default: both",
    )  # fmt: skip
    return parser


def _warmup(dtypes: list[str] | None) -> None:
    from mpc_policy.backend import compiled_available

    if not compiled_available():
        print("numba is not importable here: the solver runs its torch path, nothing to compile")
        return
    from mpc_policy.compiled.warmup import describe, warmup

    for line in describe(warmup(dtypes or ["float32", "float64"])):
        print(line)


class _StderrHandler(logging.Handler):
    """Log records on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_library_messages() -> None:
    """Show the compiled kernels' INFO messages (a first compilation takes a while)."""
    kernels = logging.getLogger("mpc_policy.compiled")
    if not any(isinstance(handler, _StderrHandler) for handler in kernels.handlers):
        kernels.addHandler(_StderrHandler())
    kernels.setLevel(logging.INFO)


def _execute(args: argparse.Namespace) -> None:
    from mpc_policy.agents import report
    from mpc_policy.agents.config import load_config
    from mpc_policy.agents.datasets import load_dataset
    from mpc_policy.agents.experiment import resolve
    from mpc_policy.agents.pipeline import collect, evaluate, train

    config = load_config(args.config, args.profile, args.overrides)
    try:
        experiment = resolve(config)
    except ValueError as error:
        raise ValueError(f"config {args.config}: {error}") from None
    method = experiment.model.method
    print(
        f"experiment {experiment.name} ({experiment.system.name}, {method}) in {experiment.run_dir}"
    )
    trained: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    if args.command in ("collect", "run"):
        path, reused = collect(experiment, overwrite=args.command == "collect" and args.restart)
        dataset = load_dataset(path)
        print(
            f"{'reused' if reused else 'collected'} {len(dataset)} expert steps "
            f"({dataset.metadata['splits']} episodes) in {path}; "
            f"{100 * dataset['converged'].mean():.1f}% of the expert's solves converged"
        )
    if args.command in ("train", "run"):
        stop_after = args.stop_after if args.command == "train" else None
        trained = train(experiment, args.restart, stop_after, args.apply_new_settings).to_dict()
        report.describe_training(method, trained, print)
        print(f"  tensorboard: tensorboard --logdir {experiment.run_dir / 'tensorboard'}")
    if args.command in ("evaluate", "run"):
        checkpoint = args.checkpoint if args.command == "evaluate" else "best"
        print(f"evaluation of the {checkpoint} checkpoint:")
        evaluation = evaluate(experiment, checkpoint, gif=args.gif or None)
        report.describe_evaluation(evaluation, print)
    if args.command == "run":
        print(report.verdict(trained, evaluation))
    print(f"results: {experiment.run_dir / 'results.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpc-policy`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _show_library_messages()
    try:
        if args.command == "warmup":
            _warmup(args.dtypes)
        else:
            _execute(args)
    except (FileNotFoundError, ValueError) as error:  # DatasetError is a ValueError
        print(f"mpc-policy {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"mpc-policy {args.command}: interrupted; `mpc-policy train` resumes from the last "
            "checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
