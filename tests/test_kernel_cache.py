"""The compiled kernels' on-disk cache: keyed on every kernel source, announced, warmed up.

numba alone invalidates a cached kernel only when its own file changes; these tests edit a
callee in another file and expect the caller to see the change in a fresh process. Each
process gets its own cache folder (``MPC_POLICY_CACHE_DIR``), so nothing here depends on
what earlier runs left in the user's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]

CALLEE = """
from mpc_policy.numerics.compiled._cache import kernel


@kernel(nogil=True)
def offset(x):
    return x + {value}
"""

CALLER = """
from mpc_policy.numerics.compiled._cache import kernel
from kernels_under_test.callee import offset


@kernel(nogil=True)
def twice_offset(x):
    return 2.0 * offset(x)
"""

# prints the result, the caller's cache hits and misses, then the log records on stderr
PROBE = """
import json, logging
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from kernels_under_test.caller import twice_offset
value = twice_offset(1.0)
stats = twice_offset.stats
print(json.dumps([value, sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]))
"""


def _run(code: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
    environment["MPC_POLICY_CACHE_DIR"] = str(folder / "cache")
    environment.pop("NUMBA_CACHE_DIR", None)
    environment["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result


def _package(folder: Path, value: float) -> None:
    package = folder / "kernels_under_test"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "callee.py").write_text(CALLEE.format(value=value))
    (package / "caller.py").write_text(CALLER)


def _probe(folder: Path) -> tuple[list[float], str]:
    result = _run(PROBE, folder)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_editing_a_callee_recompiles_its_callers(tmp_path: Path) -> None:
    _package(tmp_path, 1.0)
    (value, hits, misses), _ = _probe(tmp_path)
    assert (value, hits, misses) == (4.0, 0, 1)
    (value, hits, misses), _ = _probe(tmp_path)
    assert (value, hits, misses) == (4.0, 1, 0)  # a fresh process loads the cached kernel
    _package(tmp_path, 2.0)  # only the callee's file changes
    (value, hits, misses), _ = _probe(tmp_path)
    assert (value, hits, misses) == (6.0, 0, 1)
    assert len(list((tmp_path / "cache" / "numba").iterdir())) == 2  # one folder per source


def test_the_first_compilation_is_announced_once(tmp_path: Path) -> None:
    _package(tmp_path, 1.0)
    _, log = _probe(tmp_path)  # two kernels compile: one message
    lines = [line for line in log.splitlines() if "compiling the solver's CPU kernels" in line]
    assert len(lines) == 1, log
    assert lines[0].startswith("mpc_policy.") and str(tmp_path / "cache") in lines[0]
    assert "s of CPU" in lines[0] and "mpc-policy warmup" in lines[0]
    _, log = _probe(tmp_path)  # cached: nothing to say
    assert "compiling" not in log, log


def test_the_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mpc_policy.numerics.compiled import _cache

    monkeypatch.setenv("MPC_POLICY_CACHE_DIR", str(tmp_path / "mine"))
    assert _cache.cache_root() == tmp_path / "mine"
    assert _cache.cache_directory().parent == tmp_path / "mine" / "numba"
    monkeypatch.delenv("MPC_POLICY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform not in ("win32", "darwin"):
        assert _cache.cache_root() == tmp_path / "xdg" / "mpc_policy"


def test_kernel_refuses_a_cache_argument() -> None:
    from mpc_policy.numerics.compiled._cache import kernel

    with pytest.raises(TypeError, match="cache"):
        kernel(cache=True)


# every entry kernel after a warmup, then the public solves: no kernel compiles again
AFTER_WARMUP = """
import json, torch
from mpc_policy import MPC, GoalWeightedCost, lqr_solve
from mpc_policy.numerics.compiled import warmup
reports = warmup.warmup(["float64"])
kernels = warmup._entry_kernels()
signatures = [len(k.signatures) for k in kernels]
T, B, n, m = 4, 3, 2, 1
C = torch.eye(n + m, dtype=torch.float64).expand(B, T, n + m, n + m)
c = torch.ones(B, T, n + m, dtype=torch.float64, requires_grad=True)
F = torch.ones(B, T - 1, n, n + m, dtype=torch.float64) * 0.3
f = torch.zeros(B, T - 1, n, dtype=torch.float64)
x_init = torch.ones(B, n, dtype=torch.float64)
for bounds in ((-0.5, 0.5), (None, None)):
    solution = lqr_solve(x_init, C, c, F, f, *bounds)
    solution.u.sum().backward()


class Pendulum(torch.nn.Module):
    def forward(self, x, u):
        speed = x[..., 1] + 0.1 * (u[..., 0] - x[..., 0].sin())
        return torch.stack([x[..., 0] + 0.1 * x[..., 1], speed], -1)


weights = torch.tensor([1.0, 0.1, 0.01], dtype=torch.float64, requires_grad=True)
cost = GoalWeightedCost(weights, torch.zeros(3, dtype=torch.float64))
for bounds in ((-0.5, 0.5), (None, None)):
    mpc = MPC(n_state=n, n_ctrl=m, horizon=T, u_lower=bounds[0], u_upper=bounds[1])
    mpc(x_init, cost, Pendulum()).u.sum().backward()
print(json.dumps([list(r) for r in reports] + [signatures, [len(k.signatures) for k in kernels]]))
"""


@pytest.mark.slow
def test_warmup_compiles_every_kernel_once_and_a_later_process_loads_them(
    tmp_path: Path,
) -> None:
    result = _run("", tmp_path, "-m", "mpc_policy.agents.run.cli", "warmup", "--dtype", "float64")
    assert "float64: compiled 7 kernels in" in result.stdout, result.stdout
    assert f"cache: {tmp_path / 'cache' / 'numba'}" in result.stdout
    assert "compiling the solver's CPU kernels" in result.stderr  # the CLI shows the log
    files = list((tmp_path / "cache" / "numba").glob("*/*.nbc"))
    assert {path.name.split("-")[0] for path in files} >= {"riccati._recursion", "box_lqr._solve"}
    result = _run(AFTER_WARMUP, tmp_path)
    *reports, before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert [report[0] for report in reports] == ["float64"]
    assert reports[0][2:] == [0, 7]  # nothing compiled, every entry kernel loaded
    assert before == after == [1] * 7
    assert "compiling" not in result.stderr
