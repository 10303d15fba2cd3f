"""User dynamics modules on the compiled path by tracing, against the torch path.

Two modules with no compiled twin, as a user writes them: the README's pendulum and an MLP
dynamics x' = x + 0.1 net([x; u]) with two hidden layers of 64 (tanh). "traced" is ``MPC``
with the module as it is (traced once, then the whole forward solve in one numba call);
"torch" is the same module opting out of tracing (``compiled_twin()`` returning None: the
``box_ddp`` loop over autograd linearizations). T = 20, |u| <= 2, ``GoalWeightedCost``,
B = 1, float64, forward under ``torch.no_grad()``, from the same start each round. Both run in
this process, one thread, in alternating blocks of 5 rounds; medians over rounds of the
process's CPU time (``time.process_time``). The first traced solve (trace, code generation,
compile or cache load) is timed apart.

Usage: ``python benchmarks/bench_traced.py [--rounds 30] [--out benchmarks/results]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _timing import add_output_argument, markdown_table, set_single_thread, write_results
from torch import nn

from mpc_policy import MPC, GoalWeightedCost

T = 20
BLOCK = 5  # rounds of one path in a row


class Pendulum(nn.Module):  # README.md's example
    def __init__(self):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x, u, dt=0.05):
        theta = torch.atan2(x[..., 1], x[..., 0])
        w = x[..., 2] + (1.5 * self.g * x[..., 1] + 3.0 * u[..., 0]) * dt
        return torch.stack([torch.cos(theta + w * dt), torch.sin(theta + w * dt), w], -1)


class MLPDynamics(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3)
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    def forward(self, x, u):
        return x + 0.1 * self.net(torch.cat([x, u], -1))


def _opted_out(module: nn.Module) -> nn.Module:
    plain_type = type("Plain" + type(module).__name__, (type(module),), {})
    plain_type.compiled_twin = lambda self: None  # type: ignore[attr-defined]
    plain = plain_type()
    plain.load_state_dict(module.state_dict())
    return plain.double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    add_output_argument(parser)
    args = parser.parse_args()
    set_single_thread()
    dtype = torch.float64
    cost = GoalWeightedCost(
        torch.tensor([1.0, 1.0, 0.1, 0.001], dtype=dtype),
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype),
    )
    mpc = MPC(3, 1, T, u_lower=-2.0, u_upper=2.0, on_unconverged="ignore")
    x_init = torch.tensor([[torch.tensor(1.0).cos(), torch.tensor(1.0).sin(), 0.0]], dtype=dtype)
    records: list[dict[str, Any]] = []
    rows = []
    for name, model in (("README pendulum", Pendulum), ("MLP 2 x 64 tanh", MLPDynamics)):
        traced = model().double()
        paths = {"traced": traced, "torch": _opted_out(traced)}
        start = time.process_time()
        with torch.no_grad():
            first = mpc(x_init, cost, traced)
        first_cpu = time.process_time() - start
        assert first.info.path == "compiled-ddp", first.info.declined
        times: dict[str, list[float]] = {key: [] for key in paths}
        solutions = {}
        # blocks of BLOCK rounds per path, the blocks alternating: the load's drift is
        # shared, and each solve runs on the caches of its own path's last one (a solve of
        # the other path in between leaves the traced solve cold: 10-15 % slower)
        for _ in range(0, args.rounds, BLOCK):
            for key, dynamics in paths.items():
                for _ in range(BLOCK):
                    start = time.process_time()
                    with torch.no_grad():
                        solutions[key] = mpc(x_init, cost, dynamics)
                    times[key].append(time.process_time() - start)
        gap = float((solutions["traced"].u - solutions["torch"].u).abs().max())
        medians = {key: 1e3 * statistics.median(value) for key, value in times.items()}
        speedup = medians["torch"] / medians["traced"]
        iterations = int(solutions["traced"].info.iterations[0])
        rows.append(
            [name, f"{medians['traced']:.3f}", f"{medians['torch']:.2f}", f"{speedup:.0f}x",
             str(iterations), f"{gap:.1e}", f"{first_cpu:.2f} s"]
        )  # fmt: skip
        records.append(
            {"model": name, "traced_ms": medians["traced"], "torch_ms": medians["torch"],
             "speedup": speedup, "iterations": iterations, "max_control_gap": gap,
             "first_solve_cpu_s": first_cpu}
        )  # fmt: skip
    headers = ["model (B = 1, float64)", "traced ms", "torch path ms", "speed-up", "iterations",
               "max |u gap|", "first traced solve"]  # fmt: skip
    print(markdown_table(headers, rows))
    json_path, _ = write_results(
        "bench_traced", records, {"threads": 1, "rounds": args.rounds, "horizon": T}, args.out
    )
    print(f"\nwrote {json_path} (medians of process CPU time, one thread)")


if __name__ == "__main__":
    main()
