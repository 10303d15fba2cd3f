"""The ``mpc-policy`` command: collect expert data, train, evaluate, or all three.

    mpc-policy run configs/pendulum_dx.yaml                  # collect, train, evaluate
    mpc-policy run configs/pendulum_dx.yaml --profile quick  # a smoke test, tiny budget
    mpc-policy collect CONFIG [--restart]                    # --restart: collect afresh
    mpc-policy train CONFIG [--restart] [--stop-after N]     # resumes from its checkpoint
    mpc-policy evaluate CONFIG [--checkpoint best|last|PATH] [--gif]
    mpc-policy run CONFIG [--restart] [--gif]
    mpc-policy warmup [--dtype float32|float64]              # compile the solver's kernels
    mpc-policy --version                                     # also: python -m mpc_policy

Every subcommand but warmup takes ``--profile NAME`` and ``--set section.key=value``
(repeatable). The learning stack (torch, the solver) is imported only once a command runs, so
``--help`` is quick. An error (a config key, an argument, a file that cannot be read or
written) is one line on stderr and exit status 2; warnings raised during a command (solver
health) are printed as a section of its account.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import ExperimentConfig

__all__ = ["main"]


def _version() -> str:
    """The installed distribution's version (read from its metadata: no import of the
    package's modules)."""
    from importlib import metadata

    try:
        return metadata.version("mpc-policy")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    """argparse type of ``--stop-after``: an integer >= 1 (0 or less would train nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, received {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpc-policy",
        description="Imitation learning with differentiable MPC (Amos et al., 2018).",
    )
    parser.add_argument("--version", action="version", version=f"mpc-policy {_version()}")
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
        type=_positive_int,
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
    from mpc_policy.solve.backend import compiled_available

    if not compiled_available():
        print("numba is not importable here: the solver runs its torch path, nothing to compile")
        return
    from mpc_policy.numerics.compiled.warmup import describe, warmup

    for line in describe(warmup(dtypes or ["float32", "float64"])):
        print(line)


class _StderrHandler(logging.Handler):
    """Log records on the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _show_library_messages() -> None:
    """Show the compiled kernels' INFO messages (a first compilation takes a while)."""
    kernels = logging.getLogger("mpc_policy.numerics.compiled")
    if not any(isinstance(handler, _StderrHandler) for handler in kernels.handlers):
        kernels.addHandler(_StderrHandler())
    kernels.setLevel(logging.INFO)


def _smaller_budget(path: str, config: ExperimentConfig) -> str | None:
    """When the run trains on fewer epochs or trajectories than the config file as written
    (a ``quick`` profile: a smoke test), the two budgets in words; else None."""
    from ..config import load_config

    try:
        written = load_config(path)
    except ValueError:
        return None
    epochs, n_train = config.train.epochs, config.train.n_train or config.data.n_train
    full_epochs = written.train.epochs
    full_n_train = written.train.n_train or written.data.n_train
    if epochs >= full_epochs and n_train >= full_n_train:
        return None
    return (
        f"{epochs} epochs on {n_train} trajectories, against {full_epochs} on {full_n_train} "
        f"in {path} as written"
    )


def _account(method: str, run_dir: Path) -> Any:
    """The ``pipeline.Events`` that print each step's account as it ends, and keep what the
    verdict needs (``training``, ``evaluation``, ``expert_converged``)."""
    from . import pipeline, report

    class Account(pipeline.Events):
        training: dict[str, Any] | None = None
        evaluation: dict[str, Any] | None = None
        expert_converged: float | None = None

        def collected(self, dataset: Any, path: Path, reused: bool) -> None:
            self.expert_converged = float(dataset["converged"].mean())
            print(
                f"{'reused' if reused else 'collected'} {len(dataset)} expert steps "
                f"({dataset.metadata['splits']} episodes) in {path}; "
                f"{100 * dataset['converged'].mean():.1f}% of the expert's solves converged"
            )

        def trained(self, result: Any) -> None:
            self.training = result.to_dict()
            report.describe_training(method, self.training, print)
            print(f"  tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")

        def evaluating(self, checkpoint: str) -> None:
            print(f"evaluation of the {checkpoint} checkpoint:")

        def evaluated(self, results: dict[str, Any]) -> None:
            self.evaluation = results
            report.describe_evaluation(results, print)

    return Account()


def _execute(args: argparse.Namespace, caught: list[warnings.WarningMessage]) -> None:
    from ..config import load_config
    from . import pipeline, report

    config = load_config(args.config, args.profile, args.overrides)
    try:
        experiment, learner = pipeline.prepare(config)
    except ValueError as error:
        raise ValueError(f"config {args.config}: {error}") from None
    args.run_dir = experiment.run_dir
    method = experiment.model.method
    print(
        f"experiment {experiment.name} ({experiment.system.name}, {method}) in {experiment.run_dir}"
    )
    command = args.command
    account = _account(method, experiment.run_dir)
    pipeline.run(
        experiment,
        restart=command in ("train", "run") and args.restart,
        apply_new_settings=getattr(args, "apply_new_settings", False),
        gif=getattr(args, "gif", False) or None,
        steps=pipeline.STEPS if command == "run" else (command,),
        overwrite=command == "collect" and args.restart,
        stop_after=getattr(args, "stop_after", None),
        checkpoint=getattr(args, "checkpoint", "best"),
        learner=learner,
        events=account,
    )
    _report_warnings(caught)
    if command == "run":
        budget = _smaller_budget(args.config, config)
        print(
            report.verdict(account.training, account.evaluation, budget, account.expert_converged)
        )
    print(f"results: {experiment.run_dir / 'results.json'}")


@contextmanager
def _warnings_in_the_report() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings raised while a command runs; those not yet reported
    (``_report_warnings``) are printed when it ends, also when it fails: on stderr they
    would read as a crash, each pointing into the console script."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield caught
        finally:
            _report_warnings(caught)


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Print the collected warnings as a section of the account and forget them."""
    from . import report

    report.describe_warnings([(w.category.__name__, str(w.message)) for w in caught], print)
    caught.clear()


def _describe_os_error(error: OSError, args: argparse.Namespace) -> str:
    """One line for a failed read or write: what, where, and the setting that chose it."""
    text = error.strerror or str(error)
    if error.filename is not None:
        text = f"{text}: {str(error.filename)!r}"
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None and str(Path(run_dir)) in text:
        text += f" (under output_dir {str(run_dir)!r}: choose another with --set output_dir=...)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpc-policy`` console script; returns the exit status: 0 done,
    2 an error (one line on stderr naming its cause: a config key, an argument or a file),
    130 interrupted."""
    args = _parser().parse_args(argv)
    _show_library_messages()
    try:
        if args.command == "warmup":
            _warmup(args.dtypes)
        else:
            with _warnings_in_the_report() as caught:
                _execute(args, caught)
    except ValueError as error:  # DatasetError, RunLocked, TrainingDiverged are ValueErrors
        print(f"mpc-policy {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder, a missing file
        print(
            f"mpc-policy {args.command}: error: {_describe_os_error(error, args)}", file=sys.stderr
        )
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
