"""The line search of box-DDP (Tassa et al., 2014), each batch element on its own.

From the nominal trajectory (x_bar, u_bar) and the gains (K, k) of the last backward pass, the
candidate of step size alpha rolls the true dynamics out with

    u_t = clamp(u_bar_t + alpha k_t + K_t (x_t - x_bar_t), u_lower, u_upper),

for alpha = 1, decay, decay^2, ... (``MPCOptions.line_search_decay``, ``max_line_search``
sizes). An element takes the largest step whose cost does not exceed its threshold
(``MPCOptions.cost_threshold``: the current cost plus its rounding); an element that no step
size decreases is refused (``refuse``). Time-major shapes: x (T, B, n), u (T, B, m).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mpc_policy.numerics.riccati import Gains
from mpc_policy.options import MPCOptions
from mpc_policy.solve.backend import Kernels
from mpc_policy.solve.rollout import Model, rollout

__all__ = ["LineSearch", "Step", "refuse"]

# Line-search candidates are rolled out together while the batch of all of them has at most
# this many rows (beyond it, arithmetic outweighs the tensor operations saved).
_CANDIDATE_ROWS = 1024
# Every step size is rolled out at once (full step included) while its batch of candidates
# has at most this many rows; beyond it the full step goes first, alone.
_ALL_CANDIDATES_ROWS = 320


class Step(NamedTuple):
    """The outcome of one line search: the new nominal x (T, B, n), u (T, B, m) and cost
    (B,) (unchanged where no step was accepted), the accepted step size (B,) (0 where none)
    and the accepted elements (B,)."""

    x: Tensor
    u: Tensor
    cost: Tensor
    alpha: Tensor
    accepted: Tensor


class _CandidateCosts:
    """Costs of line-search candidates, in one call of the cost where the model allows.

    The L candidates of B elements are the rows l B + b of one batch of L B problems (the
    solver's row layout, row r is element r mod B), costed by the model restricted to
    ``arange(B)`` repeated L times; a model that cannot be restricted is costed once per
    candidate. Built once per solve, on first use.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.tiled: dict[int, Model | None] = {}

    def __call__(self, x: Tensor, u: Tensor) -> Tensor:
        """(L, B) costs of candidate trajectories x (L, T, B, n), u (L, T, B, m)."""
        L, T, B = x.shape[:3]
        if L not in self.tiled:
            restrict = getattr(self.model, "restrict", None)
            rows = torch.arange(B, device=x.device).repeat(L)
            self.tiled[L] = restrict(rows, B) if callable(restrict) else None
        tiled = self.tiled[L]
        if tiled is None:
            return torch.stack([self.model.total_cost(x[i], u[i]) for i in range(L)])
        rows_x = x.transpose(0, 1).reshape(T, L * B, x.shape[-1])
        rows_u = u.transpose(0, 1).reshape(T, L * B, u.shape[-1])
        return tiled.total_cost(rows_x, rows_u).view(L, B)


def refuse(
    refused: Tensor, stepping: Tensor, gauss_newton: Tensor, stalled: Tensor
) -> tuple[Tensor, Tensor]:
    """The elements ``refused`` (B,) by every step size: a Newton step (``stepping``) is
    retried as Gauss-Newton, a Gauss-Newton element is stuck where it is. Returns the new
    (gauss_newton, stalled) masks."""
    return gauss_newton | (refused & stepping), stalled | (refused & ~stepping)


def _first_decrease(
    candidates: tuple[Tensor, Tensor, Tensor],
    alphas: Tensor,
    eligible: Tensor,
    threshold: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The largest step whose cost is below the threshold, per element.

    Args:
        candidates: x (L, T, B, n), u (L, T, B, m) and costs (L, B) of L step sizes.
        alphas: (L,) the step sizes, largest first.
        eligible: (B,) elements that may take a step.
        threshold: (B,) the cost a step must not exceed.

    Returns:
        found (B,), and for the found elements the chosen x (T, B, n), u (T, B, m),
        cost (B,) and step size (B,) (values elsewhere are those of some candidate).
    """
    x_try, u_try, costs = candidates
    B = costs.shape[1]
    ok = eligible.unsqueeze(0) & (costs.detach() <= threshold.unsqueeze(0))
    found = ok.any(0)
    first = torch.argmax(ok.to(torch.uint8), dim=0)
    index = first.view(1, 1, B, 1)
    chosen_x = torch.take_along_dim(x_try, index, dim=0).squeeze(0)
    chosen_u = torch.take_along_dim(u_try, index, dim=0).squeeze(0)
    chosen_cost = torch.take_along_dim(costs, first.view(1, B), dim=0).squeeze(0)
    return found, chosen_x, chosen_u, chosen_cost, alphas[first]


class LineSearch:
    """The line search of one solve: its step sizes and how its candidates are rolled out.

    Small batches roll every step size out at once (one rollout of L candidates costs about
    as many tensor operations as one rollout, and no second rollout follows a refused full
    step); larger ones roll the full step out first (accepted most of the time), then the
    smaller steps of the refusing elements, all together while their batch stays small and
    one after another beyond. A lone element mostly takes the full step: it rolls that out
    alone.

    Args:
        model: the problem.
        x_init: (B, n) initial states.
        lower, upper: (T, B, m) control bounds or None.
        options: ``line_search_decay`` and ``max_line_search``.
        kernels: the numerics' backend.
        affine: whether the dynamics are affine (the full step's rollout is then exact and
            comes from the fixed-point test).
    """

    def __init__(
        self,
        model: Model,
        x_init: Tensor,
        lower: Tensor | None,
        upper: Tensor | None,
        options: MPCOptions,
        kernels: Kernels,
        affine: bool,
    ) -> None:
        B = x_init.shape[0]
        self.model, self.x_init, self.lower, self.upper = model, x_init, lower, upper
        self.kernels, self.max_steps = kernels, options.max_line_search
        self.decay = options.line_search_decay
        self.alphas = options.line_search_decay ** torch.arange(
            options.max_line_search, dtype=x_init.dtype, device=x_init.device
        )
        self.all_at_once = B * options.max_line_search <= _ALL_CANDIDATES_ROWS and not affine
        self.all_at_once = self.all_at_once and B > 1
        self.together = B * (options.max_line_search - 1) <= _CANDIDATE_ROWS
        self.candidate_costs = _CandidateCosts(model)

    def _roll(
        self, x_bar: Tensor, u_bar: Tensor, gains: Gains, alpha: float | Tensor
    ) -> tuple[Tensor, Tensor]:
        return rollout(
            self.model,
            self.x_init,
            u_bar,
            x_bar,
            gains,
            alpha,
            self.lower,
            self.upper,
            self.kernels,
        )

    def __call__(
        self,
        x_bar: Tensor,
        u_bar: Tensor,
        cost_bar: Tensor,
        gains: Gains,
        pending: Tensor,
        threshold: Tensor,
        full_step: tuple[Tensor, Tensor] | None,
    ) -> Step:
        """The step of every ``pending`` (B,) element from (x_bar, u_bar, cost_bar).

        Args:
            threshold: (B,) the cost a step must not exceed.
            full_step: the full step's x (T, B, n), u (T, B, m) when already rolled out
                (affine dynamics), or None.
        """
        if self.all_at_once:
            x_try, u_try = self._roll(x_bar, u_bar, gains, self.alphas)
            trial = (x_try, u_try, self.candidate_costs(x_try, u_try))
            accepted, x_step, u_step, cost_step, alpha = _first_decrease(
                trial, self.alphas, pending, threshold
            )
            pick = accepted.view(1, -1, 1)
            return Step(
                torch.where(pick, x_step, x_bar),
                torch.where(pick, u_step, u_bar),
                torch.where(accepted, cost_step, cost_bar),
                torch.where(accepted, alpha, 0.0),
                accepted,
            )
        x_full, u_full = full_step or self._roll(x_bar, u_bar, gains, 1.0)
        cost_full = self.model.total_cost(x_full, u_full)
        accepted = pending & (cost_full.detach() <= threshold)
        pick = accepted.view(1, -1, 1)
        step = Step(
            torch.where(pick, x_full, x_bar),
            torch.where(pick, u_full, u_bar),
            torch.where(accepted, cost_full, cost_bar),
            accepted.to(x_bar.dtype),
            accepted,
        )
        rest = pending & ~accepted
        if self.max_steps > 1 and bool(rest.any()):
            step = self._smaller_steps(step, x_bar, u_bar, gains, pending, rest, threshold)
        return step

    def _smaller_steps(
        self,
        step: Step,
        x_bar: Tensor,
        u_bar: Tensor,
        gains: Gains,
        pending: Tensor,
        rest: Tensor,
        threshold: Tensor,
    ) -> Step:
        """The elements ``rest`` (B,) that refused the full step try the smaller ones."""
        new_x, new_u, new_cost, alpha, accepted = step
        if self.together:
            x_try, u_try = self._roll(x_bar, u_bar, gains, self.alphas[1:])
            trial = (x_try, u_try, self.candidate_costs(x_try, u_try))
            found, chosen_x, chosen_u, chosen_cost, chosen_alpha = _first_decrease(
                trial, self.alphas[1:], rest, threshold
            )
            pick = found.view(1, -1, 1)
            return Step(
                torch.where(pick, chosen_x, new_x),
                torch.where(pick, chosen_u, new_u),
                torch.where(found, chosen_cost, new_cost),
                torch.where(found, chosen_alpha, alpha),
                accepted | found,
            )
        for j in range(1, self.max_steps):
            x_try, u_try = self._roll(x_bar, u_bar, gains, self.decay**j)
            cost_try = self.model.total_cost(x_try, u_try)
            ok = rest & ~accepted & (cost_try.detach() <= threshold)
            pick = ok.view(1, -1, 1)
            new_x = torch.where(pick, x_try, new_x)
            new_u = torch.where(pick, u_try, new_u)
            new_cost = torch.where(ok, cost_try, new_cost)
            alpha = torch.where(ok, self.alphas[j], alpha)
            accepted = accepted | ok
            if bool(accepted[pending].all()):
                break
        return Step(new_x, new_u, new_cost, alpha, accepted)
