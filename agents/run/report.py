"""The command line's account of a run: what was collected, learned and achieved, and a
final verdict on whether it worked.

The verdict compares the learned identifiable parameters with the truth (where the
learner's model class contains it) and the policy's rollouts with the expert's: it worked
when the identifiable parameters are within ``PARAMETER_TOLERANCE`` of the truth and the
policy succeeds as often as the expert with a return within ``RETURN_TOLERANCE`` of its
return. A run on a smaller training budget than its config file's (a ``quick`` profile) is
a smoke test: its verdict says that a mismatch is expected at that budget. When the
expert's own solves did not all converge, the hint points at ``data.expert_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["describe_evaluation", "describe_training", "describe_warnings", "verdict"]

PARAMETER_TOLERANCE = 0.05  # relative error of each identifiable combination
RETURN_TOLERANCE = 0.05  # relative gap between the policy's and the expert's mean returns

Print = Callable[[str], None]


def describe_training(method: str, result: dict[str, Any], say: Print) -> None:
    """Training's summary lines: losses, identifiable parameters, where the files are."""
    say(
        f"trained {method} for {result['epochs_done']} epochs: best validation loss "
        f"{result['best_val_loss']:.3g} at epoch {result['best_epoch']}, test loss there "
        f"{result['test_loss_at_best_val']:.3g}"
    )
    identifiable = result.get("identifiable") or {}
    if identifiable:
        parts = []
        for name, (learned, true) in identifiable.items():
            if true is None:
                parts.append(f"{name} {learned:.6g}")
            else:
                parts.append(
                    f"{name} {learned:.6g} (true {true:.6g}, "
                    f"{100 * abs(learned / true - 1):.2f}% off)"
                )
        say("  identifiable parameters: " + ", ".join(parts))
    say(f"  checkpoints: {result['checkpoint']} (latest), {result['best_checkpoint']} (best)")


def describe_evaluation(evaluation: dict[str, Any], say: Print) -> None:
    """Evaluation's summary lines: return and success of the policy (and of the expert)."""
    for who in ("policy", "expert"):
        if who in evaluation:
            result = evaluation[who]
            unconverged = result.get("unconverged_fraction")
            solver = (
                f"   {100 * unconverged:.1f}% of its solves stopped before a fixed point"
                if unconverged
                else ""
            )
            say(
                f"  {who:<7} return {result['mean_return']:9.2f} +- {result['std_return']:.2f}"
                f"   success {100 * result['success_rate']:5.1f}%"
                f"   ({len(result['returns'])} episodes){solver}"
            )
    gif = evaluation["policy"].get("gif")
    if gif:
        say(f"  rollout GIF: {gif}")


def describe_warnings(messages: list[tuple[str, str]], say: Print) -> None:
    """The warnings a run raised (solver health, mostly: unconverged or stalled solves,
    each kind summarized once per epoch by the trainer), as a section of the account
    rather than as interpreter warnings pointing into the console script.

    Args:
        messages: (category name, message) of each warning, in order.
        say: where the lines go.
    """
    if not messages:
        return
    say(
        f"solver health and other warnings ({len(messages)}; the run went on, the elements "
        "concerned were handled as model.solver says; tensorboard: solver/*):"
    )
    for category, message in messages:
        say(f"  {category}: {message}")


def verdict(
    train: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    budget: str | None = None,
    expert_converged: float | None = None,
) -> str:
    """One line: did the learner recover the truth, and does the policy do what the
    expert does?

    Args:
        train: the training summary (``TrainResult.to_dict()``), or None.
        evaluation: the evaluation results, or None.
        budget: set when the run's training budget is a smoke test's, smaller than the
            config file's own (e.g. "2 epochs on 10 trajectories, against 20 on 100 without
            --profile"): a mismatch is then expected and said so.
        expert_converged: the fraction of the expert's solves in the dataset that
            converged; below 1 the hint points at ``data.expert_options``.
    """
    findings = []
    worked = True
    identifiable = (train or {}).get("identifiable") or {}
    known = {k: v for k, v in identifiable.items() if v[1] is not None}
    if known:
        worst = max(abs(learned / true - 1) for learned, true in known.values())
        close = worst <= PARAMETER_TOLERANCE
        worked &= close
        findings.append(
            f"identifiable parameters {'within' if close else 'not within'} "
            f"{100 * PARAMETER_TOLERANCE:.0f}% of the truth (worst {100 * worst:.2f}%)"
        )
    policy_unconverged = 0.0
    if evaluation and "expert" in evaluation:
        policy, expert = evaluation["policy"], evaluation["expert"]
        gap = (expert["mean_return"] - policy["mean_return"]) / max(
            abs(expert["mean_return"]), 1e-9
        )
        matches = gap <= RETURN_TOLERANCE and policy["success_rate"] >= expert["success_rate"]
        worked &= matches
        policy_unconverged = policy.get("unconverged_fraction") or 0.0
        findings.append(
            f"policy return {policy['mean_return']:.1f} vs expert {expert['mean_return']:.1f}, "
            f"success {100 * policy['success_rate']:.0f}% vs {100 * expert['success_rate']:.0f}%"
        )
    if not findings:
        return "verdict: nothing to compare against (no known truth, no expert rollouts)"
    if worked:
        return "verdict: it worked: " + "; ".join(findings)
    hints = []
    if expert_converged is not None and expert_converged < 1:
        hints.append(
            f"only {100 * expert_converged:.1f}% of the expert's solves converged: give the "
            "expert more iterations or a looser tolerance with data.expert_options, e.g. "
            "--set 'data.expert_options={max_iter: 200}' (docs/experiments.md, solver knobs)"
        )
    if policy_unconverged > 0:
        hints.append(
            f"{100 * policy_unconverged:.1f}% of the policy's solves stopped before a fixed "
            "point: see model.solver, e.g. --set 'model.solver={max_iter: 100}'"
        )
    if budget is not None:
        head = (
            f"smoke test passed (collection, training and evaluation ran); at this budget "
            f"({budget}) the learner is not expected to match the expert yet"
        )
    else:
        head = "it did not match the expert yet"
        if not hints:
            hints.append("more data or epochs?")
    tail = f" (hint: {'; '.join(hints)})" if hints else ""
    return f"verdict: {head}: " + "; ".join(findings) + tail
