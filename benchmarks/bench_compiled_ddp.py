"""The compiled box-DDP path against the box_ddp loop, on the pendulum of bench_pendulum.

The problem of ``_problems.pendulum_problem``: Pendulum-v1 dynamics without the velocity clip
(``PendulumDynamics(PendulumParams(max_speed=None))``, the same model as
``_problems.PendulumDynamics``), T = 20, |u| <= 2, the quadratic cost as ``QuadraticCost``.
"compiled-ddp" is ``MPC`` with these modules (the whole forward solve in one numba call);
"box_ddp" is the same solve with the dynamics as a subclass without a compiled twin (the
loop of ``mpc_policy.solve.ddp.box_ddp`` over the compiled numerics: the path before). Both run
in this process, one thread, the no_grad forwards in alternating blocks of 5 rounds, the
others' rounds interleaved; medians over rounds of the process's CPU time
(``time.process_time``: less sensitive than wall-clock time to a loaded host).

CasADi (``casadi``, optional) runs the same B = 1 float64 problem as a peer: multiple
shooting, ``sqpmethod`` with ``qrqp``, started from the rollout of u = 0 as ours is; the
gap column says how far its controls are from ours.

Measured: forward under ``torch.no_grad()`` at B = 1 (float64) and B = 256 (float32),
forward with inputs requiring grad and its backward at B = 1 (float64), the receding-horizon
policy (``MPCPolicy`` on Pendulum-v0 with the environment's own dynamics and cost, warm start,
float64, B = 1, per step; each controller in its own closed loop from the same start,
CasADi's too), and the torch (aten) operations of one B = 1 forward (``torch.profiler``).

Usage: ``python benchmarks/bench_compiled_ddp.py [--rounds 30] [--steps 100] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from _problems import pendulum_problem
from _timing import add_output_argument, markdown_table, set_single_thread, write_results
from torch.profiler import ProfilerActivity, profile

from mpc_policy import MPC, MPCPolicy, QuadraticCost
from mpc_policy import envs as _envs  # noqa: F401  (registers the environments)
from mpc_policy.envs import PendulumDynamics, PendulumParams, pendulum_cost

T = 20
BOUND = 2.0


class TwinlessPendulum(PendulumDynamics):
    """The same dynamics without a compiled twin: MPC runs the box_ddp loop."""


def _sqp_solver(ca: Any, X: Any, U: Any, x0: Any, objective: Any, gaps: list, name: str) -> Any:
    """CasADi's sqpmethod with qrqp on the multiple-shooting problem (states X, controls U,
    parameter x0, the dynamics' gaps as equality constraints), silent."""
    quiet = {"print_iter": False, "print_header": False, "print_info": False}
    options = {
        "qpsol": "qrqp",
        "qpsol_options": quiet,
        "print_time": False,
        "print_header": False,
        "print_iteration": False,
        "print_status": False,
    }
    nlp = {"x": ca.vertcat(ca.vec(X), ca.vec(U)), "p": x0, "f": objective, "g": ca.vertcat(*gaps)}
    return ca.nlpsol(name, "sqpmethod", nlp, options)


def dynamics_pair(dtype: torch.dtype, params: PendulumParams) -> dict[str, PendulumDynamics]:
    return {
        "compiled-ddp": PendulumDynamics(params, dtype=dtype),
        "box_ddp": TwinlessPendulum(params, dtype=dtype),
    }


def forward_cases(rounds: int) -> list[dict[str, Any]]:
    records = []
    params = PendulumParams(max_speed=None)
    for B, dtype in ((1, torch.float64), (256, torch.float32)):
        x_init, C, c = pendulum_problem(B, T, seed=0, dtype=dtype)
        cost = QuadraticCost(C, c)
        mpc = MPC(3, 1, T, u_lower=-BOUND, u_upper=BOUND, on_unconverged="ignore")
        models = dynamics_pair(dtype, params)
        times: dict[str, list[float]] = {name: [] for name in models}
        solutions = {}
        for name, dynamics in models.items():  # first calls (compilation) untimed
            with torch.no_grad():
                solutions[name] = mpc(x_init, cost, dynamics)
            assert solutions[name].info.path == ("torch" if name == "box_ddp" else name)
        # blocks of 5 rounds per path, the blocks alternating (as bench_traced.py): each solve
        # runs on its own path's caches, the load's drift is shared
        for _ in range(0, rounds, 5):
            for name, dynamics in models.items():
                for _ in range(5):
                    with torch.no_grad():
                        start = time.process_time()
                        mpc(x_init, cost, dynamics)
                        times[name].append((time.process_time() - start) * 1e3)
        gap = (solutions["compiled-ddp"].u - solutions["box_ddp"].u).abs().max().item()
        for name in models:
            records.append(
                {
                    "case": f"forward no_grad B={B} {str(dtype)[6:]}",
                    "path": name,
                    "median_ms": statistics.median(times[name]),
                    "iterations": float(solutions[name].info.iterations.double().mean()),
                    "max |u - u_box_ddp|": gap,
                }
            )
    # forward with inputs requiring grad, and its backward, B = 1 float64
    x_init, C, c = pendulum_problem(1, T, seed=0, dtype=torch.float64)
    mpc = MPC(3, 1, T, u_lower=-BOUND, u_upper=BOUND, on_unconverged="ignore")
    models = dynamics_pair(torch.float64, params)
    forward: dict[str, list[float]] = {name: [] for name in models}
    backward: dict[str, list[float]] = {name: [] for name in models}
    grads: dict[str, torch.Tensor] = {}
    for r in range(rounds + 1):
        for name, dynamics in models.items():
            leaf = x_init.clone().requires_grad_(True)
            C_leaf = C.clone().requires_grad_(True)
            start = time.process_time()
            solution = mpc(leaf, QuadraticCost(C_leaf, c), dynamics)
            middle = time.process_time()
            (solution.u.sum() + solution.x.square().sum()).backward()
            end = time.process_time()
            if r > 0:
                forward[name].append((middle - start) * 1e3)
                backward[name].append((end - middle) * 1e3)
            grads[name] = torch.cat([leaf.grad.flatten(), C_leaf.grad.flatten()])
    gap = (grads["compiled-ddp"] - grads["box_ddp"]).abs().max() / grads["box_ddp"].abs().max()
    for name in models:
        for case, times in (
            ("forward (grad) B=1 float64", forward),
            ("backward B=1 float64", backward),
        ):
            records.append(
                {
                    "case": case,
                    "path": name,
                    "median_ms": statistics.median(times[name]),
                    "iterations": float("nan"),
                    "max |u - u_box_ddp|": float(gap) if case.startswith("backward") else 0.0,
                }
            )
    return records


def receding(steps: int) -> list[dict[str, Any]]:
    policies = {}
    for name, dynamics in dynamics_pair(torch.float64, PendulumParams()).items():
        policies[name] = MPCPolicy(
            dynamics,
            pendulum_cost(dtype=torch.float64),
            T,
            u_lower=-BOUND,
            u_upper=BOUND,
            solve_dtype=torch.float64,
            warm_start=True,
            jacobian="analytic",
            on_unconverged="ignore",
        )
    times: dict[str, list[float]] = {name: [] for name in policies}
    iterations: dict[str, list[float]] = {name: [] for name in policies}
    # each controller in its own loop, as a user runs one (and as CasADi's below): steps of
    # the other path in between would leave each step to run on cold caches
    for name, policy in policies.items():
        env = gym.make("mpc_policy/Pendulum-v0")
        obs = env.reset(seed=1)[0]
        for step in range(steps + 1):
            start = time.process_time()
            with torch.no_grad():
                action = policy(torch.as_tensor(obs).unsqueeze(0)).numpy()[0]
            if step > 0:
                times[name].append((time.process_time() - start) * 1e3)
                iterations[name].append(float(policy.last_info.iterations.double().mean()))
            obs = env.step(action.astype(np.float32))[0]
    return [
        {
            "case": "receding B=1 warm float64 (per step)",
            "path": name,
            "median_ms": statistics.median(times[name]),
            "iterations": statistics.fmean(iterations[name]),
            "max |u - u_box_ddp|": 0.0,
        }
        for name in policies
    ]


def casadi_receding(steps: int) -> list[dict[str, Any]]:
    """CasADi sqpmethod + qrqp as the receding-horizon controller of ``receding`` (the
    environment's dynamics with its velocity clip, ``pendulum_cost``), warm-started from
    its last solution shifted by one step; per-step CPU time of the solve."""
    try:
        import casadi as ca
    except ImportError:
        return []
    dt, a, b, speed = 0.05, 1.5 * 10.0, 3.0, 8.0
    weights, goal = [1.0, 1.0, 0.1, 0.001], [1.0, 0.0, 0.0, 0.0]
    X, U, x0 = ca.SX.sym("x", 3, T), ca.SX.sym("u", 1, T), ca.SX.sym("x0", 3)
    gaps, objective = [X[:, 0] - x0], 0
    for t in range(T):
        tau = ca.vertcat(X[:, t], U[:, t])
        objective += sum(w * (tau[i] - g) ** 2 for i, (w, g) in enumerate(zip(weights, goal)))
        if t < T - 1:
            theta = ca.atan2(X[1, t], X[0, t])
            w = ca.fmin(ca.fmax(X[2, t] + dt * (a * ca.sin(theta) + b * U[0, t]), -speed), speed)
            theta = theta + dt * w
            gaps.append(X[:, t + 1] - ca.vertcat(ca.cos(theta), ca.sin(theta), w))
    solver = _sqp_solver(ca, X, U, x0, objective, gaps, "receding")
    lbx = np.concatenate([np.full(3 * T, -np.inf), np.full(T, -BOUND)])
    ubx = np.concatenate([np.full(3 * T, np.inf), np.full(T, BOUND)])
    env = gym.make("mpc_policy/Pendulum-v0")
    obs = env.reset(seed=1)[0]
    guess = np.concatenate([np.tile(obs.astype(np.float64), T), np.zeros(T)])
    times, iterations = [], []
    for step in range(steps + 1):
        start = time.process_time()
        result = solver(x0=guess, p=obs.astype(np.float64), lbx=lbx, ubx=ubx, lbg=0, ubg=0)
        elapsed = (time.process_time() - start) * 1e3
        solution = np.asarray(result["x"]).reshape(-1)
        if step > 0:
            times.append(elapsed)
            iterations.append(float(solver.stats()["iter_count"]))
        states, controls = solution[: 3 * T].reshape(T, 3), solution[3 * T :]
        guess = np.concatenate(
            [np.vstack([states[1:], states[-1:]]).reshape(-1), np.append(controls[1:], 0.0)]
        )
        obs = env.step(np.array([controls[0]], dtype=np.float32))[0]
    return [
        {
            "case": "receding B=1 warm float64 (per step)",
            "path": "CasADi sqpmethod+qrqp",
            "median_ms": statistics.median(times),
            "iterations": statistics.fmean(iterations),
            "max |u - u_box_ddp|": float("nan"),
        }
    ]


def casadi_peer(rounds: int) -> list[dict[str, Any]]:
    """CasADi sqpmethod + qrqp on the B = 1 float64 problem, if casadi is installed."""
    try:
        import casadi as ca
    except ImportError:
        return []
    x_init, C, c = pendulum_problem(1, T, seed=0, dtype=torch.float64)
    dynamics = PendulumDynamics(PendulumParams(max_speed=None), dtype=torch.float64)
    mpc = MPC(3, 1, T, u_lower=-BOUND, u_upper=BOUND, on_unconverged="ignore")
    with torch.no_grad():
        ours = mpc(x_init, QuadraticCost(C, c), dynamics)
    dt, a, b = 0.05, 1.5 * 10.0, 3.0
    X, U, x0 = ca.SX.sym("x", 3, T), ca.SX.sym("u", 1, T), ca.SX.sym("x0", 3)
    gaps, objective = [X[:, 0] - x0], 0
    for t in range(T):
        tau = ca.vertcat(X[:, t], U[:, t])
        objective += 0.5 * ca.mtimes([tau.T, C[0, t].numpy(), tau])
        objective += ca.mtimes(c[0, t].numpy().reshape(1, -1), tau)
        if t < T - 1:
            theta = ca.atan2(X[1, t], X[0, t])
            w = X[2, t] + dt * (a * ca.sin(theta) + b * U[0, t])
            theta = theta + dt * w
            gaps.append(X[:, t + 1] - ca.vertcat(ca.cos(theta), ca.sin(theta), w))
    solver = _sqp_solver(ca, X, U, x0, objective, gaps, "pendulum")
    rollout = dynamics_rollout(dynamics, x_init, torch.zeros(1, T, 1, dtype=torch.float64))
    guess = np.concatenate([rollout[0].numpy().reshape(-1), np.zeros(T)])
    lbx = np.concatenate([np.full(3 * T, -np.inf), np.full(T, -BOUND)])
    ubx = np.concatenate([np.full(3 * T, np.inf), np.full(T, BOUND)])
    arguments = {"x0": guess, "p": x_init[0].numpy(), "lbx": lbx, "ubx": ubx, "lbg": 0, "ubg": 0}
    times: list[float] = []
    for r in range(rounds + 1):
        start = time.process_time()
        result = solver(**arguments)
        if r > 0:
            times.append((time.process_time() - start) * 1e3)
    u = np.asarray(result["x"]).reshape(-1)[3 * T :]
    gap = float(np.abs(u - ours.u[0, :, 0].numpy()).max())
    iterations = float(solver.stats()["iter_count"])
    return [
        {
            "case": "forward no_grad B=1 float64",
            "path": "CasADi sqpmethod+qrqp",
            "median_ms": statistics.median(times),
            "iterations": iterations,
            "max |u - u_box_ddp|": gap,
        }
    ]


def dynamics_rollout(dynamics: PendulumDynamics, x_init: torch.Tensor, u: torch.Tensor):
    """x (B, T, 3) of u (B, T, 1) rolled out from x_init (B, 3)."""
    states = [x_init]
    with torch.no_grad():
        for t in range(u.shape[1] - 1):
            states.append(dynamics(states[-1], u[:, t]))
    return torch.stack(states, 1)


def op_counts() -> list[dict[str, Any]]:
    x_init, C, c = pendulum_problem(1, T, seed=0, dtype=torch.float64)
    cost = QuadraticCost(C, c)
    mpc = MPC(3, 1, T, u_lower=-BOUND, u_upper=BOUND, on_unconverged="ignore")
    records = []
    for name, dynamics in dynamics_pair(torch.float64, PendulumParams(max_speed=None)).items():
        with torch.no_grad():
            mpc(x_init, cost, dynamics)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                mpc(x_init, cost, dynamics)
        ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        records.append(
            {
                "case": "aten ops per forward B=1 (no_grad)",
                "path": name,
                "median_ms": float("nan"),
                "iterations": float(ops),
                "max |u - u_box_ddp|": 0.0,
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=100)
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    records = forward_cases(args.rounds) + casadi_peer(args.rounds)
    records += receding(args.steps) + casadi_receding(args.steps) + op_counts()
    headers = ["case", "path", "median ms", "iterations (ops for the profile)", "max gap"]
    rows = [
        [r["case"], r["path"], r["median_ms"], r["iterations"], r["max |u - u_box_ddp|"]]
        for r in records
    ]
    print(markdown_table(headers, rows))
    settings = {"threads": 1, "rounds": args.rounds, "steps": args.steps, "horizon": T}
    json_path, _ = write_results("bench_compiled_ddp", records, settings, args.out)
    print(f"\nwrote {json_path} (medians of process CPU time, one thread)")


if __name__ == "__main__":
    main()
