"""Imports point one way: the environments need no solver and no learning code; the
learning code builds on both (STYLE.md, "Imports point one way")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what an environment module may import from this project: itself, and the cost leaf
ENVS_MAY_IMPORT = ("mpc_policy.envs", "mpc_policy.costs")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "envs").glob("*.py")), ids=lambda p: p.name)
def test_environments_import_no_solver_and_no_learning_code(path):
    ours = {name for name in _imports(path) if name.split(".")[0] in ("mpc_policy", "envs")}
    wrong = sorted(name for name in ours if not name.startswith(ENVS_MAY_IMPORT))
    assert not wrong, f"{path.name} imports {wrong}"


def test_the_solver_imports_no_environment_and_no_learning_code():
    for path in sorted((ROOT / "mpc_policy").rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name == "mpc_policy":
            continue  # the package registers the environments' gym ids
        relative = path.relative_to(ROOT / "mpc_policy").parts
        if relative[0] in ("envs", "agents"):
            continue
        wrong = sorted(
            name
            for name in _imports(path)
            if name.startswith(("mpc_policy.envs", "mpc_policy.agents"))
        )
        assert not wrong, f"{path} imports {wrong}"


def test_registering_the_environments_imports_none_of_them():
    """``import mpc_policy`` registers the gym ids by their entry-point strings; the
    environment modules load when an environment or a ``System`` record is first used."""
    code = (
        "import sys, mpc_policy, gymnasium\n"
        "before = sorted(m for m in sys.modules if m.startswith('mpc_policy.envs'))\n"
        "spec = gymnasium.spec('mpc_policy/Pendulum-v0')\n"
        "gymnasium.spec('mpc_policy/CartPoleTrack-v0')\n"
        "env = gymnasium.make('mpc_policy/Pendulum-v0')\n"
        "from mpc_policy.envs.registry import get_system\n"
        "print(before, spec.entry_point, get_system('cartpole').env_id)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "['mpc_policy.envs']",
        "mpc_policy.envs.pendulum:PendulumEnv",
        "mpc_policy/CartPole-v0",
    ]
