"""An MPC controller as a policy: observations in, the first planned control out.

For each observation o (a row of a batch) the policy solves

    u_{1:T}(o) = argmin_u  sum_t C(x_t, u_t)   s.t.  x_1 = obs_to_state(o),
                 x_{t+1} = f(x_t, u_t),  u_lower <= u_t <= u_upper

with ``MPC`` and acts with u_1. The cost C and the dynamics f are modules whose parameters
the policy owns, so ``policy.parameters()`` are what an optimizer learns (the paper's
mpc.dx / mpc.cost setting, Amos et al. 2018, section 5.3). Each row is solved on its own:
one observation's answer never depends on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy.mpc import MPC
from mpc_policy.options import MPCOptions
from mpc_policy.problem.contract import CheckedCost, CheckedDynamics, check_declared_sizes
from mpc_policy.problem.validation import all_finite
from mpc_policy.solution import Solution, SolverInfo
from mpc_policy.solve.compiled_path import compiled_ddp

__all__ = ["MPCPolicy"]

Bound = float | Tensor | None


def _identity(obs: Tensor) -> Tensor:
    return obs


def _control_size(dynamics: nn.Module, u_lower: Bound, u_upper: Bound) -> int | None:
    """m from the dynamics' ``n_ctrl`` attribute, else from a bound tensor, else unknown."""
    n_ctrl = getattr(dynamics, "n_ctrl", None)
    if isinstance(n_ctrl, int):
        return n_ctrl
    for bound in (u_lower, u_upper):
        if isinstance(bound, Tensor) and bound.dim() >= 1:
            return int(bound.shape[-1])
    return None


class MPCPolicy(nn.Module):
    """Differentiable MPC policy: ``policy(obs)`` is the first control of the plan.

    Args:
        dynamics: module ``dynamics(x (N, n), u (N, m)) -> (N, n)`` (the solver calls it
            on rows, ``mpc_policy.problem.contract``); its parameters are learnable through the
            policy. An ``n_ctrl`` attribute gives m.
        cost: module ``cost(x (B, T, n), u (B, T, m)) -> (B, T)``, e.g. ``GoalWeightedCost``.
        horizon: planning horizon T (states x_1..x_T, controls u_1..u_T).
        u_lower: control lower bound: a float, (m,), (B, m) or (B, T, m) tensor; None =
            unbounded. Tensors are buffers (they follow ``.to(device)``).
        u_upper: control upper bound, same forms.
        obs_to_state: maps observations (B, n_obs) to MPC states (B, n); identity if None.
            A module here is a submodule (its parameters are learned too).
        solve_dtype: dtype of the solve (e.g. ``torch.float64`` for float32 observations:
            tight tolerances converge); outputs come back in the observation dtype. None
            solves in the observation dtype.
        warm_start: keep the last plan of every row, shifted by one step (its last
            control repeated), and start the next call's solve from it when that call
            gives no ``u_init`` and has the same batch size (receding horizon). Rows marked
            in ``episode_start`` start from zeros; ``reset_warm_start()`` forgets the cache.
        **solver_options: ``MPCOptions`` fields (``max_iter``, ``tol``, ``grad_method``,
            ``jacobian``, ``on_unconverged``, ...); an unknown name is a ``TypeError``.

    Attributes:
        last_info: the ``SolverInfo`` of the last solve (None before the first): per-row
            iterations, convergence flags and residuals, for logging solver health.

    Example:
        >>> policy = MPCPolicy(PendulumDynamics(), pendulum_cost(), horizon=20,
        ...                    u_lower=-2.0, u_upper=2.0, solve_dtype=torch.float64)
        >>> u = policy(obs)                       # (B, m), obs (B, 3) float32
        >>> plan = policy.plan(obs, u_init=warm)  # Solution: x (B, T, n), u (B, T, m)
    """

    def __init__(
        self,
        dynamics: nn.Module,
        cost: nn.Module,
        horizon: int,
        u_lower: Bound = None,
        u_upper: Bound = None,
        obs_to_state: Callable[[Tensor], Tensor] | None = None,
        solve_dtype: torch.dtype | None = None,
        warm_start: bool = False,
        **solver_options: Any,
    ) -> None:
        super().__init__()
        for name, module in (("dynamics", dynamics), ("cost", cost)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name}: expected an nn.Module, received {type(module).__name__}")
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon: expected an integer >= 1, received {horizon!r}")
        if obs_to_state is not None and not callable(obs_to_state):
            raise TypeError(f"obs_to_state: expected a callable, received {obs_to_state!r}")
        if solve_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(
                f"solve_dtype: expected None, torch.float32 or torch.float64, "
                f"received {solve_dtype!r}"
            )
        for name, bound in (("u_lower", u_lower), ("u_upper", u_upper)):
            if bound is not None and not isinstance(bound, int | float | Tensor):
                raise TypeError(
                    f"{name}: expected None, a float or a tensor, received {type(bound).__name__}"
                )
        self.dynamics = dynamics
        self.cost = cost
        self.horizon = horizon
        self.obs_to_state = _identity if obs_to_state is None else obs_to_state
        self.solve_dtype = solve_dtype
        self.options = MPCOptions.from_kwargs(**solver_options)
        self.n_ctrl = _control_size(dynamics, u_lower, u_upper)
        self._bounds: dict[str, float | None] = {}
        for name, bound in (("u_lower", u_lower), ("u_upper", u_upper)):
            if isinstance(bound, Tensor):
                self.register_buffer(name, bound.detach().clone(), persistent=False)
            else:
                self._bounds[name] = None if bound is None else float(bound)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start: expected a bool, received {warm_start!r}")
        self.warm_start = warm_start
        self._warm_plan: Tensor | None = None
        self.last_info: SolverInfo | None = None
        # the MPC of the last call, reused while its sizes and options hold (a tuple: not a
        # submodule, so neither state_dict nor modules() see it)
        self._solver: tuple[MPC] | None = None

    def reset_warm_start(self, rows: Tensor | np.ndarray | None = None) -> None:
        """Forget the cached plans: all of them, or those of ``rows`` (a (B,) bool mask)."""
        if rows is None or self._warm_plan is None:
            self._warm_plan = None
            return
        mask = torch.as_tensor(rows, dtype=torch.bool, device=self._warm_plan.device)
        if mask.shape != self._warm_plan.shape[:1]:
            raise ValueError(
                f"rows: expected a bool mask of shape ({self._warm_plan.shape[0]},), "
                f"received {tuple(mask.shape)}"
            )
        self._warm_plan = self._warm_plan.masked_fill(mask.view(-1, 1, 1), 0.0)

    def _cached_start(self, batch: int, episode_start: Tensor | np.ndarray | None) -> Tensor | None:
        if episode_start is not None:
            self.reset_warm_start(episode_start)
        plan = self._warm_plan
        if plan is None or plan.shape[0] != batch:
            return None
        return plan

    def _remember(self, u: Tensor) -> None:
        """Cache the plan u (B, T, m) shifted by one step, its last control repeated."""
        u = u.detach() if u.requires_grad else u
        if u.device.type == "cpu":  # numpy's calls cost less than tensor operations
            a = u.numpy()
            shifted = torch.from_numpy(np.concatenate((a[:, 1:], a[:, -1:]), axis=1))
        else:
            shifted = torch.cat([u[:, 1:], u[:, -1:]], dim=1)
        # a non-finite row (``Status.NONFINITE``) starts its next solve from zeros
        if not all_finite(shifted):
            shifted.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        self.__dict__["_warm_plan"] = shifted  # a plain attribute: no module bookkeeping

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}, n_ctrl={self.n_ctrl}, solve_dtype={self.solve_dtype}"

    def control_bounds(self) -> tuple[float | Tensor | None, float | Tensor | None]:
        """(u_lower, u_upper) as given: a float, a tensor ((m,), (B, m) or (B, T, m)), or
        None (unbounded)."""
        lower, upper = (
            self._bounds[name] if name in self._bounds else getattr(self, name)
            for name in ("u_lower", "u_upper")
        )
        return lower, upper

    def _bound(self, name: str, like: Tensor) -> float | Tensor | None:
        if name in self._bounds:
            return self._bounds[name]
        bound: Tensor = getattr(self, name)
        return bound.to(dtype=like.dtype, device=like.device)

    def _controller(self, n_state: int, n_ctrl: int, like: Tensor) -> MPC:
        """The MPC of these sizes with the current options and bounds (in ``like``'s dtype),
        built once and rebuilt only when a size, the horizon or ``options`` changes."""
        lower, upper = self._bound("u_lower", like), self._bound("u_upper", like)
        cached = None if self._solver is None else self._solver[0]
        if (
            cached is None
            or cached.options is not self.options
            or (cached.n_state, cached.n_ctrl, cached.horizon) != (n_state, n_ctrl, self.horizon)
        ):
            cached = MPC(n_state, n_ctrl, self.horizon, lower, upper)
            cached.options = self.options  # frozen: shared, not copied
            self._solver = (cached,)
        if cached.u_lower is not lower:
            cached.u_lower = lower
        if cached.u_upper is not upper:
            cached.u_upper = upper
        return cached

    def plan(
        self,
        obs: Tensor | np.ndarray,
        u_init: Tensor | None = None,
        episode_start: Tensor | np.ndarray | None = None,
    ) -> Solution:
        """Solve the MPC problem from a batch of observations.

        Args:
            obs: (B, n_obs) observations, or (n_obs,) for a single one (the returned
                tensors then keep a batch dimension of 1). A numpy array is converted.
            u_init: (B, T, m) warm start for this call (e.g. the previous plan shifted by
                one step); if None, the cached plan with ``warm_start=True``, else zeros.
            episode_start: (B,) bool, the rows whose episode starts with this observation
                (their cached plan is dropped); only with ``warm_start=True``.

        Returns:
            ``Solution`` with x (B, T, n), u (B, T, m) and cost (B,) in the observation
            dtype, differentiable with respect to the observations and the parameters of
            the cost, the dynamics and ``obs_to_state``; and ``info``, also kept in
            ``self.last_info``.
        """
        solution, out = self._solve(obs, u_init, episode_start)
        return Solution(
            solution.x.to(out), solution.u.to(out), solution.cost.to(out), solution.info
        )

    def _solve(
        self,
        obs: Tensor | np.ndarray,
        u_init: Tensor | None,
        episode_start: Tensor | np.ndarray | None,
    ) -> tuple[Solution, torch.dtype]:
        """``plan``'s solution in the solve's dtype, and the observations' dtype."""
        if isinstance(obs, np.ndarray):
            obs = torch.as_tensor(obs)
        if not isinstance(obs, Tensor) or not obs.is_floating_point():
            raise TypeError(
                f"obs: expected a floating-point tensor, received "
                f"{getattr(obs, 'dtype', type(obs).__name__)}"
            )
        if obs.dim() == 1:
            obs = obs.unsqueeze(0)
        if obs.dim() != 2:
            raise ValueError(f"obs: expected shape (B, n_obs), received {tuple(obs.shape)}")
        if not all_finite(obs):
            finite = torch.isfinite(obs).all(-1)
            rows = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(
                f"obs: rows {rows[:10]} of {obs.shape[0]} contain NaN or Inf; an MPC policy "
                "plans from finite observations only (check the environment or its wrapper)"
            )
        x_init = self.obs_to_state(obs)
        if not isinstance(x_init, Tensor) or x_init.dim() != 2 or x_init.shape[0] != obs.shape[0]:
            raise ValueError(
                f"obs_to_state: expected a (B, n) tensor with B = {obs.shape[0]}, received "
                f"{tuple(x_init.shape) if isinstance(x_init, Tensor) else type(x_init).__name__}"
            )
        dtype = self.solve_dtype or x_init.dtype
        x_init = x_init.to(dtype)
        if u_init is None and self.warm_start:
            u_init = self._cached_start(int(x_init.shape[0]), episode_start)
        n_ctrl = self.n_ctrl
        if u_init is not None:
            u_init = u_init.to(dtype=dtype, device=x_init.device)
            n_ctrl = int(u_init.shape[-1]) if n_ctrl is None else n_ctrl
        if n_ctrl is None:
            raise ValueError(
                "cannot tell the control size m: give the dynamics module an integer "
                "`n_ctrl` attribute, pass tensor bounds, or pass u_init"
            )
        mpc = self._controller(int(x_init.shape[1]), n_ctrl, x_init)
        solution = mpc(x_init, self.cost, self.dynamics, u_init)
        self.__dict__["last_info"] = solution.info  # a plain attribute: no module bookkeeping
        if self.warm_start:
            self._remember(solution.u)
        return solution, obs.dtype

    def forward(
        self,
        obs: Tensor | np.ndarray,
        u_init: Tensor | None = None,
        episode_start: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """The first control u_1 (B, m) of the plan for observations (B, n_obs)."""
        if u_init is None and not torch.is_grad_enabled():
            action = self._act_compiled(obs, episode_start)
            if action is not None:
                return action
        solution, out = self._solve(obs, u_init, episode_start)
        return solution.u[:, 0].to(out)

    def _act_compiled(
        self, obs: Tensor | np.ndarray, episode_start: Tensor | np.ndarray | None
    ) -> Tensor | None:
        """``forward`` without a gradient (acting) on the compiled path, or None where the
        general path (``_solve``) must answer: ``compiled_ddp`` called with the tensors
        ``MPC.forward`` would hand it, so the same actions, report and cached plan, without
        ``MPC.forward``'s checks and wrapping (a receding-horizon step is mostly that
        overhead). Taken for observations in a plain CPU tensor or array, ``obs_to_state``
        the identity and the bounds given as numbers."""
        if isinstance(obs, np.ndarray):
            obs = torch.as_tensor(obs)
        m = self.n_ctrl
        if (
            not isinstance(obs, Tensor)
            or obs.dtype not in (torch.float32, torch.float64)
            or obs.requires_grad
            or m is None
            or self.obs_to_state is not _identity
            or len(self._bounds) != 2
        ):
            return None
        try:
            obs.numpy()  # a CPU tensor without a transform's wrapping
        except (RuntimeError, TypeError):
            return None
        obs = obs.unsqueeze(0) if obs.dim() == 1 else obs
        x_init = obs.to(self.solve_dtype or obs.dtype)
        if x_init.dim() != 2 or not all_finite(x_init):  # the general path names the problem
            return None
        (B, n), T = x_init.shape, self.horizon
        mpc = self._controller(n, m, x_init)
        check_declared_sizes(self.dynamics, n, m)
        lower, upper = mpc.expanded_bounds(B, x_init)
        plan = self._cached_start(B, episode_start) if self.warm_start else None
        if plan is None:
            plan = torch.zeros(B, T, m, dtype=x_init.dtype)
        elif plan.shape != (B, T, m):
            return None
        solved = compiled_ddp(
            self.cost,
            self.dynamics,
            x_init,
            plan.to(x_init.dtype).transpose(0, 1),
            None if lower is None else lower.transpose(0, 1),
            None if upper is None else upper.transpose(0, 1),
            mpc.options,
        )
        if isinstance(solved, str):
            return None
        info = solved.info
        if mpc.options.on_unconverged != "ignore" and not info.all_converged:
            x, u_plan, _ = solved.values()
            checked = CheckedCost(self.cost), CheckedDynamics(self.dynamics, n, m, B)
            mpc.enforce(info, *checked, x, u_plan)
        u_plan = solved.controls()
        self.__dict__["last_info"] = info
        if self.warm_start:
            self._remember(u_plan)
        return u_plan[:, 0].to(obs.dtype)
