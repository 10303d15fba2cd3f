"""Imports point one way: the environments need no solver and no learning code; the
learning code builds on both (STYLE.md, "Imports point one way")."""

from __future__ import annotations

import ast
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
