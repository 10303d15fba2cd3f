"""What a solve returns: the trajectory, its cost and a per-element report of how it ended."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from mpc_policy._warnings import user_stacklevel

__all__ = [
    "SOURCE_CONSTRAINTS",
    "SOURCE_COST",
    "SOURCE_DYNAMICS",
    "ConstraintReport",
    "ConvergenceError",
    "Solution",
    "SolverInfo",
    "Status",
]

# where a NONFINITE element's NaN or Inf came from (``SolverInfo.nonfinite_source``)
SOURCE_DYNAMICS, SOURCE_COST, SOURCE_CONSTRAINTS = 1, 2, 3


class ConvergenceError(RuntimeError):
    """Raised when ``on_unconverged="raise"`` and some batch elements did not converge."""


class Status(enum.IntEnum):
    """How the solve of one batch element ended (``SolverInfo.status``).

    Attributes:
        CONVERGED: a fixed point within tolerance, with positive curvature in the free
            controls (a local minimum of the convex approximation).
        MAX_ITER: not converged yet: the iterations ran out (raise ``max_iter``).
        STALLED: no line-search step decreased the cost before a fixed point.
        NONFINITE: the problem data, the trajectory, the cost or their derivatives became
            NaN or Inf; the element's x, u and cost are NaN and it takes no part in the
            gradient.
        INDEFINITE: the point reached (a fixed point, or the last iterate of an element
            still moving) is no minimum: the control Hessian of the Riccati recursion is
            indefinite on the free controls beyond the first regularization shift (a
            saddle, or a cost unbounded below).
        INFEASIBLE: the inequality constraints (``MPC(constraints=...)``) could not be met:
            their violation did not fall at the largest penalty; x and u are the least
            violating point found, and ``Solution.constraints.violation`` says by how much.
    """

    CONVERGED = 0
    MAX_ITER = 1
    STALLED = 2
    NONFINITE = 3
    INDEFINITE = 4
    INFEASIBLE = 5


_ADVICE = {
    Status.MAX_ITER: "did not reach a fixed point within max_iter iterations; raise max_iter, "
    "loosen tol or warm-start with u_init",
    Status.STALLED: "stalled before a fixed point (no line-search step decreased the cost); "
    "warm-start with u_init or raise max_line_search",
    Status.NONFINITE: "became non-finite (NaN or Inf in the cost, the dynamics, the "
    "constraints, their derivatives or the trajectory); their x, u and cost are NaN: check "
    "the module named below and its parameters for these elements",
    Status.INDEFINITE: "have no minimizer at the point found (the control Hessian is "
    "indefinite on the free controls: a saddle, or a cost unbounded below); make the cost "
    "convex in the controls, bound them, or start elsewhere with u_init",
    Status.INFEASIBLE: "cannot meet their constraints (the violation did not fall at the "
    "largest penalty, penalty_max); see Solution.constraints.violation, and relax the "
    "constraints or the control bounds, or check that x_init is feasible",
}


@dataclass
class SolverInfo:
    """Per-element report of a solve (paper, section 4.3: non-convergence is data).

    Attributes:
        iterations: (B,) outer iterations each element used.
        converged: (B,) whether each element reached a fixed point within tolerance that
            is a minimum (``status == Status.CONVERGED``).
        residual: (B,) final fixed-point residual: the largest control change that a full
            step of the convex approximation (on the linearized dynamics) would still
            make, relative to 1 + max |u|.
        step_size: (B,) the last line-search step accepted (0 if none was).
        backend: which implementation ran the numerics, "compiled" or "torch"
            (``mpc_policy.solve.backend``).
        status: (B,) int8 ``Status`` code of each element; derived from ``converged``
            (CONVERGED or MAX_ITER) when not given.
        nonfinite_source: (B,) int8, where a NONFINITE element's NaN or Inf came from:
            1 the dynamics (next states or Jacobians), 2 the cost (values or derivatives),
            3 the constraints (their values, with a cost that stayed finite), 0 elsewhere
            or unknown; None when not recorded.
        path: which loop ran ``MPC``'s forward solve: "compiled-ddp" (the whole box-DDP
            loop in one compiled call, models included: ``mpc_policy.solve.compiled_path``) or
            "torch" (the Python loop ``mpc_policy.solve.ddp.box_ddp``, its numerics on
            ``backend``); ``lqr_solve`` and constrained solves report "torch".
        declined: for ``MPC`` on the torch path, why the compiled path did not run (one
            line), or None.
    """

    iterations: Tensor
    converged: Tensor
    residual: Tensor
    step_size: Tensor
    backend: str = "torch"
    status: Tensor | None = None
    nonfinite_source: Tensor | None = None
    path: str = "torch"
    declined: str | None = None

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = torch.where(
                self.converged,
                torch.tensor(int(Status.CONVERGED), dtype=torch.int8, device=self.converged.device),
                torch.tensor(int(Status.MAX_ITER), dtype=torch.int8, device=self.converged.device),
            )

    @property
    def codes(self) -> Tensor:
        """(B,) int8 ``Status`` codes (``status``, never None after construction)."""
        assert self.status is not None
        return self.status

    @property
    def nonfinite(self) -> Tensor:
        """(B,) whether each element became non-finite (``Status.NONFINITE``)."""
        return self.codes == int(Status.NONFINITE)

    @property
    def status_names(self) -> list[str]:
        """The ``Status`` name of each element, e.g. ["CONVERGED", "NONFINITE", ...]."""
        return [Status(int(code)).name for code in self.codes.tolist()]

    def clone(self) -> SolverInfo:
        """A copy with cloned tensors (ordinary ones, for a report made in inference mode)."""
        return SolverInfo(
            self.iterations.clone(),
            self.converged.clone(),
            self.residual.clone(),
            self.step_size.clone(),
            backend=self.backend,
            status=self.codes.clone(),
            nonfinite_source=None
            if self.nonfinite_source is None
            else self.nonfinite_source.clone(),
            path=self.path,
            declined=self.declined,
        )

    def index(self, rows: Tensor) -> SolverInfo:
        """The report of the elements ``rows`` ((k,) indices or a (B,) mask)."""
        return SolverInfo(
            self.iterations[rows],
            self.converged[rows],
            self.residual[rows],
            self.step_size[rows],
            backend=self.backend,
            status=self.codes[rows],
            nonfinite_source=None if self.nonfinite_source is None else self.nonfinite_source[rows],
            path=self.path,
            declined=self.declined,
        )

    def scatter(self, rows: Tensor, other: SolverInfo) -> SolverInfo:
        """This report with the elements ``rows`` (k,) replaced by ``other`` (of k elements)."""

        def put(whole: Tensor, part: Tensor) -> Tensor:
            return whole.index_copy(0, rows, part.to(whole.dtype))

        mine, theirs = self.nonfinite_source, other.nonfinite_source
        source = None if mine is None or theirs is None else put(mine, theirs)
        return SolverInfo(
            put(self.iterations, other.iterations),
            put(self.converged, other.converged),
            put(self.residual, other.residual),
            put(self.step_size, other.step_size),
            backend=self.backend,
            status=put(self.codes, other.codes),
            nonfinite_source=source,
            path=self.path,
            declined=self.declined,
        )

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def unconverged_indices(self) -> list[int]:
        return torch.nonzero(~self.converged).flatten().tolist()

    @property
    def unconverged_fraction(self) -> float:
        return float((~self.converged).float().mean())

    def describe_unconverged(self) -> str:
        """One sentence per kind of failure, naming the elements (the first ten of each)."""
        parts = []
        codes = self.codes
        for status, advice in _ADVICE.items():
            bad = torch.nonzero(codes == int(status)).flatten().tolist()
            if not bad:
                continue
            shown = bad[:10]
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            residual = ""
            if status in (Status.MAX_ITER, Status.STALLED):
                values = self.residual[shown].tolist()
                residual = f" (residuals {[f'{r:.2e}' for r in values]})"
            if status == Status.NONFINITE and self.nonfinite_source is not None:
                residual = self._sources(codes == int(status))
            parts.append(
                f"{len(bad)} of {codes.numel()} batch elements {advice}: "
                f"{status.name} at indices {shown}{more}{residual}"
            )
        return "; ".join(parts)

    def _sources(self, mask: Tensor) -> str:
        """Where the NaN or Inf of the elements ``mask`` (B,) came from, as text."""
        assert self.nonfinite_source is not None
        parts = []
        for code, part in (
            (SOURCE_DYNAMICS, "the dynamics"),
            (SOURCE_COST, "the cost"),
            (SOURCE_CONSTRAINTS, "the constraints"),
        ):
            where = torch.nonzero(mask & (self.nonfinite_source == code)).flatten().tolist()
            if where:
                parts.append(f"from {part} at {where[:10]}")
        return f" ({'; '.join(parts)})" if parts else ""

    def enforce(self, policy: str, context: str = "", hint: str = "") -> None:
        """Apply the user's policy for unconverged elements (warn / raise / ...).

        Args:
            policy: the ``on_unconverged`` option.
            context: appended to the message (e.g. the modules that were solved).
            hint: a sentence appended after it (e.g. a module found not deterministic).
        """
        if policy == "ignore" or self.all_converged:  # "ignore" first: no tensor op
            return
        message = self.describe_unconverged() + (f" [{context}]" if context else "") + hint
        if policy == "raise":
            raise ConvergenceError(message)
        # no graph is built under no_grad (acting, evaluation): there is no gradient to zero
        zeroed = policy == "zero_grad" and torch.is_grad_enabled()
        count = int((~self.converged & ~self.nonfinite).sum())
        suffix = (
            f"; their gradients are zeroed ({count} of {self.converged.numel()} elements; "
            "on_unconverged='zero_grad' is the default, 'warn' lets their gradient, taken "
            "away from a fixed point, through)"
            if zeroed and count
            else ""
        )
        warnings.warn(message + suffix, RuntimeWarning, stacklevel=user_stacklevel())


@dataclass
class ConstraintReport:
    """Per-element report of the constraints at the returned solution (``Solution.constraints``).

    Attributes:
        values: (B, T, p) g(x_t, u_t) at the solution (feasible where <= 0).
        multipliers: (B, T, p) their multipliers mu >= 0 (0 on inactive rows); pass them back
            as ``multipliers=`` to warm-start the next solve.
        active: (B, T, p) the rows held as equalities by the gradient (mu > 0).
        bounds_active: (B, T, m) the controls at a bound, held there by the gradient.
        violation: (B,) the largest max(g, 0) of each element.
        residual: (B,) the complementarity residual max |min(-g, mu)| (violation included).
        penalty: (B,) the augmented-Lagrangian penalty each element ended with.
        outer_iterations: (B,) multiplier updates each element used.
        feasible: (B,) False where the constraints were found infeasible
            (``Status.INFEASIBLE``).
    """

    values: Tensor
    multipliers: Tensor
    active: Tensor
    bounds_active: Tensor
    violation: Tensor
    residual: Tensor
    penalty: Tensor
    outer_iterations: Tensor
    feasible: Tensor

    def index(self, rows: Tensor) -> ConstraintReport:
        """The report of the elements ``rows`` ((k,) indices or a (B,) mask)."""
        fields = self.__dataclass_fields__
        return ConstraintReport(**{name: getattr(self, name)[rows] for name in fields})


@dataclass
class Solution:
    """Result of ``lqr_solve`` or ``MPC``.

    Attributes:
        x: (B, T, n) optimal states.
        u: (B, T, m) optimal controls.
        cost: (B,) objective value of the trajectory.
        info: per-element convergence report.
        constraints: the per-element report of the inequality constraints (values,
            multipliers, active sets, violation), or None for a solve without them.
    """

    x: Tensor
    u: Tensor
    cost: Tensor
    info: SolverInfo
    constraints: ConstraintReport | None = None
