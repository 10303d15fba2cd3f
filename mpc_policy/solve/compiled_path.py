"""The compiled forward path of ``MPC``: the whole box-DDP solve in one numba call.

The forward solve needs no autograd graph, only values and derivatives at each iterate, so
for a cost and dynamics with compiled twins it runs as one kernel
(``mpc_policy.numerics.compiled.ddp``), model included, each batch element on its own. The backward
is the torch path's: one linearization with autograd at the fixed point and the implicit
LQR solve. A module describes its twin by ``compiled_twin() -> (kind, parameters,
constants)`` (the built-in pendulums, ``QuadraticCost``, ``GoalWeightedCost``); the
parameters are read at every solve, shared (a scalar or a vector) or one per batch element.

A dynamics module without ``compiled_twin`` is traced (``mpc_policy.problem.trace``): its
forward on one row becomes generated numba functions (step, Jacobian, curvature) called by
address from the same kernel, with its parameters read at every solve. A module that declares
``compiled_twin()`` and returns None (the built-ins' subclasses) is not traced. A traced twin
is checked once against the module's forward on a batch of rows before its first use.

The path is taken when the backend is compiled (CPU tensors, numba importable), both modules
have twins of matching sizes, and ``grad_method`` is not "unroll"; ``compiled_ddp`` says why
not otherwise (``SolverInfo.declined``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mpc_policy.numerics.compiled._arrays import as_array
from mpc_policy.numerics.riccati import Gains
from mpc_policy.options import MPCOptions
from mpc_policy.problem.contract import module_name
from mpc_policy.problem.trace import Traced, check_traced, flat_parameters, trace
from mpc_policy.solution import SolverInfo, Status
from mpc_policy.solve.backend import Kernels, select
from mpc_policy.solve.ddp import DDPResult

__all__ = ["PATH", "CompiledSolve", "compiled_ddp"]

PATH = "compiled-ddp"
# the twins' kinds, n and m, as in numerics/compiled/models.py (not imported: it needs numba)
_DYNAMICS = {"pendulum": (1, 3, 1), "windy_pendulum": (2, 3, 1), "cartpole": (3, 5, 1)}
_COSTS = {"quadratic": 0, "goal_weighted": 1}
_TRACED = 4
_CONVERGED, _NONFINITE = int(Status.CONVERGED), int(Status.NONFINITE)


def _describe(
    module: Any, what: str
) -> tuple[str, tuple[Tensor, ...], tuple[float, ...]] | str | None:
    """The module's ``compiled_twin()`` description, why there is none, or None where the
    module declares nothing (a dynamics module is then traced)."""
    describe = getattr(module, "compiled_twin", None)
    if describe is None and what == "dynamics":
        return None
    if not callable(describe):
        spec = None
    elif torch.is_grad_enabled():  # values only (a derived parameter builds no graph)
        with torch.no_grad():
            spec = describe()
    else:
        spec = describe()
    if spec is None:
        return f"{what} ({module_name(module)}) has no compiled twin"
    if spec[0] not in (_DYNAMICS if what == "dynamics" else _COSTS):
        return f"{what} ({module_name(module)}) describes an unknown twin {spec[0]!r}"
    return spec


def _array(z: Tensor, dtype: torch.dtype) -> np.ndarray:
    """z's values in the problem's dtype, as a float64 array (the kernel's arithmetic)."""
    return z.detach().to(dtype).to(torch.float64).contiguous().numpy()


_NO_CODE = np.zeros(3, dtype=np.int64)
_NO_WORK = np.zeros(1)
# a traced twin's compiled functions, or the reason it failed its check (per trace)
_checked: dict[int, tuple[Traced, Any] | str] = {}


def _traced(
    dynamics: Any, n: int, m: int, dtype: torch.dtype
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """The traced twin of a dynamics module without ``compiled_twin``, or why not."""
    name = module_name(dynamics)
    if not isinstance(dynamics, nn.Module):
        return f"dynamics ({name}) is not an nn.Module and has no compiled twin"
    traced = trace(dynamics, n, m)
    if isinstance(traced, str):
        return f"dynamics ({name}): {traced}"
    done = _checked.get(id(traced))
    if done is None:
        from mpc_policy.numerics.compiled.traced import compile_traced

        functions = compile_traced(traced.source, traced.work)
        try:
            reason = check_traced(dynamics, traced, functions, n, m)
        except Exception as error:  # the module fails on a batch: the torch path says how
            reason = f"its forward fails on a batch of rows ({type(error).__name__})"
        done = _checked[id(traced)] = (traced, functions) if reason is None else reason
    if isinstance(done, str):
        return f"dynamics ({name}): {done}"
    functions = done[1]
    code = np.array(functions.addresses, dtype=np.int64)
    params = flat_parameters(dynamics, traced, dtype)
    return _TRACED, params, _NO_WORK, code, np.empty(functions.work)


def _dynamics(
    dynamics: Any, B: int, n: int, m: int, dtype: torch.dtype
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """The dynamics twin's kind, parameters (P, 1 or B), constants, a traced model's function
    addresses and scratch; or why not."""
    spec = _describe(dynamics, "dynamics")
    if spec is None:
        return _traced(dynamics, n, m, dtype)
    if isinstance(spec, str):
        return spec
    name, params, constants = spec
    kind, n_twin, m_twin = _DYNAMICS[name]
    if (n, m) != (n_twin, m_twin):
        return f"dynamics ({module_name(dynamics)}) has n={n_twin}, m={m_twin}, not {n}, {m}"
    shapes = [p.shape for p in params]
    if any(len(shape) > 1 or (len(shape) == 1 and shape[0] != B) for shape in shapes):
        given = [tuple(shape) for shape in shapes]
        return f"dynamics ({module_name(dynamics)}): parameters of shapes {given}, not () or (B,)"
    # each value in the problem's dtype first, as the torch module reads it (``in_dtype``)
    if not any(shapes):  # shared: one float each, no tensor operation
        values = [float(p.detach() if p.requires_grad else p) for p in params]
        if dtype == torch.float32:
            values = [float(np.float32(v)) for v in values]
        rows = np.array(values, dtype=np.float64).reshape(-1, 1)
    else:
        with torch.no_grad():
            same = [p if p.dtype == dtype else p.to(dtype) for p in params]
            rows = torch.stack([p.expand(B) for p in same]).to(torch.float64).numpy()
    return (
        kind,
        np.ascontiguousarray(rows),
        np.array(constants, dtype=np.float64),
        _NO_CODE,
        _NO_WORK,
    )


def _cost(
    cost: Any, B: int, T: int, d: int, dtype: torch.dtype
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | str:
    """The cost twin's kind and its terms (C, c of a quadratic cost; w, goal, linear of a
    goal-weighted one), or why not."""
    spec = _describe(cost, "cost")
    if spec is None:
        return f"cost ({module_name(cost)}) has no compiled twin"
    if isinstance(spec, str):
        return spec
    name, terms, _ = spec
    kind = _COSTS[name]
    empty = np.zeros((1, 1, 1, 1))
    if name == "goal_weighted":
        if any(z.shape != (d,) for z in terms):
            return f"cost ({module_name(cost)}) has size {terms[0].shape[-1]}, not n+m = {d}"
        # numpy views where the dtype is the problem's (no tensor operation), else rounded
        wgl = np.array([_array(z, dtype) if z.dtype != dtype else as_array(z) for z in terms])
        return kind, empty, empty[..., 0], wgl.astype(np.float64, copy=False)
    C, c = terms
    while C.dim() < 4:
        C = C.unsqueeze(0)
    while c.dim() < 3:
        c = c.unsqueeze(0)
    if (
        C.dim() != 4
        or c.dim() != 3
        or C.shape[0] not in (1, B)
        or C.shape[1] not in (1, T)
        or c.shape[0] not in (1, B)
        or c.shape[1] not in (1, T)
        or C.shape[-2:] != (d, d)
        or c.shape[-1] != d
    ):
        return f"cost ({module_name(cost)}): terms of shapes {tuple(C.shape)}, {tuple(c.shape)}"
    return kind, _array(C, dtype), _array(c, dtype), empty[0, 0, :1]


class CompiledSolve:
    """A compiled solve: its report and its outputs, wrapped as tensors on demand.

    Args:
        out: the kernel's outputs (``numerics.compiled.ddp.CompiledDDPResult``: float64
            arrays, time first).
        dtype: the problem's dtype (float32 outputs are rounded to it as they are wrapped).
        kernels: the kernels of the backward.

    Attributes:
        info: the per-element report (``path`` "compiled-ddp").
        kernels: as given.
    """

    def __init__(self, out: Any, dtype: torch.dtype, kernels: Kernels) -> None:
        self._out = out
        self._dtype = dtype
        self._nan_set = False
        self.kernels = kernels
        wrap = torch.from_numpy
        self.info = SolverInfo(
            wrap(out.iterations),
            wrap(out.status == _CONVERGED),
            self._real(out.residual),
            self._real(out.step_size),
            backend=kernels.name,
            status=wrap(out.status),
            nonfinite_source=wrap(out.source),
            path=PATH,
        )

    def _real(self, z: np.ndarray) -> Tensor:
        out = torch.from_numpy(z)
        return out if self._dtype == torch.float64 else out.to(self._dtype)

    def result(self) -> DDPResult:
        """The result as ``box_ddp`` returns it (time-major x, u, their cost, the last gains:
        what the gradient rules read); for a call with a gradient, instead of ``values``
        (which writes NaN into the NONFINITE elements' outputs)."""
        out, real = self._out, self._real
        K, k, free, chol, Q, shift = out.gains
        gains = Gains(real(K), real(k), torch.from_numpy(free), real(chol), real(Q), real(shift))
        return DDPResult(real(out.x), real(out.u), real(out.cost), gains, self.info)

    def values(self) -> tuple[Tensor, Tensor, Tensor]:
        """Batch-first x (B, T, n), u (B, T, m) and cost (B,) for a call that needs no
        gradient: NaN for the NONFINITE elements, no module called again (the cost is the
        kernel's float64 evaluation rounded to the dtype: the cost module's to rounding)."""
        out = self._nan_rows()
        x, cost = self._real(out.x).transpose(0, 1), self._real(out.cost)
        return x, self.controls(), cost

    def controls(self) -> Tensor:
        """``values``' u (B, T, m) alone."""
        return self._real(self._nan_rows().u).transpose(0, 1)

    def _nan_rows(self) -> Any:
        """The outputs with NaN in the NONFINITE elements (set once)."""
        out = self._out
        if not self._nan_set:
            bad = out.status == _NONFINITE
            if bad.any():
                out.x[:, bad], out.u[:, bad], out.cost[bad] = np.nan, np.nan, np.nan
            self._nan_set = True
        return out


def compiled_ddp(
    cost: Any,
    dynamics: Any,
    x_init: Tensor,
    u_init: Tensor,
    lower: Tensor | None,
    upper: Tensor | None,
    options: MPCOptions,
) -> CompiledSolve | str:
    """The box-DDP solve on the compiled path, or the one-line reason it does not run.

    Args:
        cost: the user's cost module.
        dynamics: the user's dynamics module.
        x_init: (B, n) initial states.
        u_init: (T, B, m) initial controls.
        lower: (T, B, m) control lower bounds, or None.
        upper: (T, B, m) control upper bounds, or None.
        options: the solver options.

    Returns:
        The solve (its report, and its result as ``box_ddp``'s or as values), or the reason
        the torch path runs instead.
    """
    if options.grad_method == "unroll":
        return "grad_method='unroll' differentiates through the iterations"
    kernels = select(options.backend, x_init.device)
    if kernels.name != "compiled":
        return f"the backend is {kernels.name} (compiled needs CPU tensors and numba)"
    T, B, m = u_init.shape
    n, dtype = x_init.shape[1], x_init.dtype
    twins = _twins(cost, dynamics, B, T, n, m, dtype)
    if isinstance(twins, str):
        return twins
    from mpc_policy.numerics.compiled.ddp import solve_ddp

    # solve_ddp reads values only (it detaches where needed): no tensor op here
    return CompiledSolve(solve_ddp(twins, x_init, u_init, lower, upper, options), dtype, kernels)


def _twins(
    cost: Any, dynamics: Any, B: int, T: int, n: int, m: int, dtype: torch.dtype
) -> Any | str:
    """The modules' compiled twins (``numerics.compiled.ddp.Twins``) with their current
    parameter values, for a problem of B elements, horizon T, sizes n, m in ``dtype``; or the
    one-line reason there are none."""
    model = _dynamics(dynamics, B, n, m, dtype)
    if isinstance(model, str):
        return model
    terms = _cost(cost, B, T, n + m, dtype)
    if isinstance(terms, str):
        return terms
    from mpc_policy.numerics.compiled.ddp import Twins

    return Twins(model[0], model[1], model[2], terms[0], terms[1], terms[2], terms[3], *model[3:])
