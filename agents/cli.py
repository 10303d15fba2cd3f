"""The ``mpc-policy`` command: collect expert data, train, evaluate, or all three.

    mpc-policy run configs/pendulum_dx.yaml                  # collect, train, evaluate
    mpc-policy run configs/pendulum_dx.yaml --profile quick  # the same on a tiny budget
    mpc-policy collect CONFIG [--overwrite]
    mpc-policy train CONFIG [--restart] [--stop-after N]     # resumes from its checkpoint
    mpc-policy evaluate CONFIG [--checkpoint best|last|PATH] [--gif]

Every subcommand takes ``--profile NAME`` and ``--set section.key=value`` (repeatable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from mpc_policy.agents.config import ExperimentConfig, load_config
from mpc_policy.agents.datasets import DatasetError, load_dataset
from mpc_policy.agents.pipeline import check_config, collect, evaluate, run, train

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
    sub.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    sub = commands.add_parser("train", parents=[common], help="behaviour cloning (resumable)")
    sub.add_argument("--restart", action="store_true", help="discard checkpoints and logs")
    apply_help = "resume even with changed optimizer/scheduler settings, applying them"
    sub.add_argument("--apply-new-settings", action="store_true", help=apply_help)
    sub.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs in this call (rerun to resume)",
    )
    sub = commands.add_parser("evaluate", parents=[common], help="roll the policy out")
    sub.add_argument("--checkpoint", default="best", help="best, last or a checkpoint file")
    sub.add_argument("--gif", action="store_true", help="render the first episode to a GIF")
    sub = commands.add_parser("run", parents=[common], help="collect, train and evaluate")
    sub.add_argument("--restart", action="store_true", help="discard checkpoints and logs")
    sub.add_argument("--apply-new-settings", action="store_true", help=apply_help)
    return parser


def _print_evaluation(evaluation: dict[str, Any]) -> None:
    for who in ("policy", "expert"):
        if who in evaluation:
            result = evaluation[who]
            print(
                f"  {who:<7} return {result['mean_return']:9.2f} +- {result['std_return']:.2f}"
                f"   success {100 * result['success_rate']:5.1f}%"
                f"   ({len(result['returns'])} episodes)"
            )
    gif = evaluation["policy"].get("gif")
    if gif:
        print(f"  rollout GIF: {gif}")


def _print_training(config: ExperimentConfig, result: dict[str, Any]) -> None:
    print(
        f"trained {config.model.method} for {result['epochs_done']} epochs: best validation "
        f"loss {result['best_val_loss']:.3g} at epoch {result['best_epoch']}, "
        f"test loss there {result['test_loss_at_best_val']:.3g}"
    )
    print(f"  tensorboard: tensorboard --logdir {result['log_dir']}")
    print(f"  checkpoints: {result['checkpoint']} (latest), {result['best_checkpoint']} (best)")


def _execute(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.profile, args.overrides)
    try:
        check_config(config)
    except ValueError as error:
        raise ValueError(f"config {args.config}: {error}") from None
    print(f"experiment {config.name} ({config.system}, {config.model.method}) in {config.run_dir}")
    if args.command == "collect":
        path, reused = collect(config, overwrite=args.overwrite)
        dataset = load_dataset(path)
        print(
            f"{'reused' if reused else 'collected'} {len(dataset)} expert steps "
            f"({dataset.metadata['splits']} episodes) in {path}; "
            f"{100 * dataset['converged'].mean():.1f}% of the expert's solves converged"
        )
    elif args.command == "train":
        result = train(config, args.restart, args.stop_after, args.apply_new_settings)
        _print_training(config, result.to_dict())
    elif args.command == "evaluate":
        print(f"evaluation of the {args.checkpoint} checkpoint:")
        _print_evaluation(evaluate(config, args.checkpoint, gif=args.gif or None))
    else:
        summary = run(config, restart=args.restart, apply_new_settings=args.apply_new_settings)
        print(f"dataset: {summary['dataset']}" + (" (reused)" if summary["dataset_reused"] else ""))
        _print_training(config, summary["train"])
        print("evaluation of the best checkpoint:")
        _print_evaluation(summary["evaluation"])
    print(f"results: {config.run_dir / 'results.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpc-policy`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        _execute(args)
    except (DatasetError, FileNotFoundError, ValueError) as error:
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
