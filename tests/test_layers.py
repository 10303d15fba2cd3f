"""Imports point one way: the solver's folders stack numerics < problem < solve < grad < the
public layers < policy < sb3 and compat; the environments need no solver and no learning code;
the learning code builds on both, its folders stacked config < data < learners < train < run <
experiments (STYLE.md, "Imports point one way")."""

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


# The solver's layers, lowest first: a module may import the modules of its own layer and of
# the layers below, never above. The leaves (options, reports, warnings, the cost and dynamics
# modules a user builds on) import no other layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_warnings", "options", "solution", "costs", "dynamics", "slew_rate"),
    ("numerics",),
    ("problem",),
    ("solve",),
    ("grad",),
    ("lqr", "mpc", "constrained_mpc", "local_model", "trust_region"),
    ("policy",),
    ("sb3", "compat"),
)


def _layer(module: str) -> int:
    """The layer of ``mpc_policy.<part>...`` (its first part names a folder or a module)."""
    part = module.split(".")[1]
    for level, names in enumerate(LAYERS):
        if part in names:
            return level
    raise AssertionError(f"mpc_policy.{part} is in no layer: add it to LAYERS")


def _solver_modules() -> list[Path]:
    return [
        path
        for path in sorted((ROOT / "mpc_policy").rglob("*.py"))
        # the package's entry points: __init__ registers the gym ids, __main__ is the command
        if path.relative_to(ROOT / "mpc_policy").parts not in (("__init__.py",), ("__main__.py",))
    ]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_solver_folders_import_downward_only():
    wrong = []
    for path in _solver_modules():
        own = _layer(_module_name(path))
        for name in _imports(path):
            if name.startswith("mpc_policy.") and name.split(".")[1] not in ("envs", "agents"):
                if _layer(name) > own:
                    wrong.append(f"{_module_name(path)} -> {name}")
    assert wrong == []


# The learning code's layers (agents/), lowest first, as the solver's: the configuration is a
# leaf; expert data; the learners; their training (objectives, trainer, checkpoints); running
# an experiment (the command, the pipeline); the paper's experiments on top.
AGENT_LAYERS: tuple[tuple[str, ...], ...] = (
    ("config", "yaml_profiles"),
    ("data",),
    ("learners",),
    ("train",),
    ("run",),
    ("experiments",),
)


def _agent_layer(module: str) -> int:
    """The layer of ``mpc_policy.agents.<part>...``."""
    part = module.split(".")[2]
    for level, names in enumerate(AGENT_LAYERS):
        if part in names:
            return level
    raise AssertionError(f"mpc_policy.agents.{part} is in no layer: add it to AGENT_LAYERS")


def _agent_imports(path: Path) -> set[str]:
    """The ``mpc_policy.agents`` modules ``path`` imports, relative imports resolved,
    function-level (lazy) imports included."""
    parts = path.relative_to(ROOT / "agents").with_suffix("").parts
    package = ["mpc_policy", "agents", *parts[:-1]]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
            else:
                base = package[: len(package) - node.level + 1] + (
                    node.module.split(".") if node.module else []
                )
            names.add(".".join(base))
            if node.module is None:  # from . import report: the module report
                names.update(".".join([*base, alias.name]) for alias in node.names)
    return {name for name in names if name.startswith("mpc_policy.agents.")}


def _agent_modules() -> list[Path]:
    # agents/__init__.py is the package's docstring; it imports nothing
    return [
        p for p in sorted((ROOT / "agents").rglob("*.py")) if p != ROOT / "agents" / "__init__.py"
    ]


def test_the_agents_folders_import_downward_only():
    wrong = []
    for path in _agent_modules():
        name = "mpc_policy.agents." + ".".join(
            path.relative_to(ROOT / "agents").with_suffix("").parts
        )
        own = _agent_layer(name)
        for imported in _agent_imports(path):
            if _agent_layer(imported) > own:
                wrong.append(f"{name} -> {imported}")
    assert wrong == []


def test_the_agents_package_imports_nothing_at_import_time():
    assert _imports(ROOT / "agents" / "__init__.py") == set()


# compat translates mpc.pytorch's calls into the public API; it names no solver internals
PUBLIC = (
    "mpc_policy.costs",
    "mpc_policy.dynamics",
    "mpc_policy.local_model",
    "mpc_policy.lqr",
    "mpc_policy.mpc",
    "mpc_policy.options",
    "mpc_policy.slew_rate",
    "mpc_policy.solution",
    "mpc_policy.trust_region",
)


def test_compat_imports_only_the_public_layers():
    wrong = []
    for path in sorted((ROOT / "mpc_policy" / "compat").rglob("*.py")):
        for name in _imports(path):
            public = name.startswith("mpc_policy.compat") or name == "mpc_policy"
            if name.startswith("mpc_policy") and not public and name not in PUBLIC:
                wrong.append(f"{_module_name(path)} -> {name}")
    assert wrong == []


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports; ``from package import module`` counts as an
    import of the module, not of the package's ``__init__``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                inner = f"{node.module}.{alias.name}"
                if inner in modules:
                    names.add(inner)
                elif node.module in modules:
                    names.add(node.module)
    return names


def test_the_numerics_warn_of_nothing():
    """The kernels report what they found (``Gains.shift``); the layers above decide what is
    worth a warning and point it at the user's line (``mpc_policy._warnings``)."""
    wrong = []
    for path in sorted((ROOT / "mpc_policy" / "numerics").rglob("*.py")):
        names = _imports(path) | {
            f"{node.module}.{alias.name}"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        found = sorted(n for n in names if n == "warnings" or n.startswith("mpc_policy._warnings"))
        wrong += [f"{_module_name(path)} -> {name}" for name in found]
    assert wrong == []


def test_the_solver_has_no_import_circle():
    graph = {_module_name(path): set[str]() for path in _solver_modules()}
    for path in _solver_modules():
        graph[_module_name(path)] = _imported_modules(path, set(graph))
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, node])):
                return cycle
        state[node] = 2
        return None

    cycles = [cycle for node in sorted(graph) if node not in state and (cycle := visit(node, []))]
    assert cycles == []


def test_the_solver_imports_no_environment_and_no_learning_code():
    for path in _solver_modules():
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


def test_every_test_file_is_marked_with_registered_layers():
    """``pytest -m <layer>`` finds a layer's tests: each test file has its layers in
    tests/conftest.py, each of them a marker registered in pyproject.toml."""
    import tomllib

    from tests.conftest import TEST_LAYERS

    files = sorted(path.name for path in (ROOT / "tests").glob("test_*.py"))
    assert sorted(TEST_LAYERS) == files
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    registered = {line.split(":")[0] for line in pytest_options["ini_options"]["markers"]}
    used = {layer for layers in TEST_LAYERS.values() for layer in layers}
    assert used <= registered and all(TEST_LAYERS.values())
