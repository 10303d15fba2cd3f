"""Import names: the folders envs/ and agents/ are the packages mpc_policy.envs and
mpc_policy.agents (setuptools' package-dir, no links), so nothing generic lands on a user's
path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_IMPORT = re.compile(r"^\s*(from|import)\s+(envs|agents)\b", re.MULTILINE)


def _declared() -> tuple[dict[str, str], list[str]]:
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return settings["package-dir"], settings["packages"]


def test_the_folders_are_subpackages_of_mpc_policy_without_links():
    package_dir, _ = _declared()
    assert package_dir == {
        "mpc_policy": "mpc_policy",
        "mpc_policy.envs": "envs",
        "mpc_policy.agents": "agents",
    }
    links = [p for p in ROOT.rglob("*") if p.is_symlink() and ".git" not in p.parts]
    assert links == []


def test_the_wheel_holds_every_package_folder_and_only_mpc_policy():
    package_dir, packages = _declared()
    found = []
    for name, folder in package_dir.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            inner = init.parent.relative_to(ROOT / folder).parts
            if name == "mpc_policy" and inner[:1] in (("envs",), ("agents",)):
                continue
            found.append(".".join((name, *inner)))
    assert sorted(packages) == sorted(found)
    assert all(p.startswith("mpc_policy") for p in packages)


def test_no_code_imports_the_old_top_level_names():
    offenders = []
    for folder in ("mpc_policy", "envs", "agents", "tests", "examples", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if TOP_LEVEL_IMPORT.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_one_import_registers_the_environments(tmp_path):
    script = (
        "import sys, gymnasium, mpc_policy\n"
        "for env_id in ('mpc_policy/Pendulum-v0', 'mpc_policy/CartPole-v0',"
        " 'mpc_policy/WindyPendulum-v0'):\n"
        "    gymnasium.make(env_id).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('envs', 'agents')))\n"
    )
    # run outside the repository, as an installed user would
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_package_loads_its_names_lazily(tmp_path):
    """``import mpc_policy`` costs no torch; each public name loads on first use, and the
    function box_qp keeps its name when its module of the same name is imported."""
    script = (
        "import importlib, sys, mpc_policy\n"
        "print('torch' in sys.modules)\n"
        "importlib.import_module('mpc_policy.numerics.box_qp')\n"
        "from mpc_policy import MPC, box_qp, lqr_solve\n"
        "print(callable(box_qp) and not isinstance(box_qp, type(sys)), 'torch' in sys.modules)\n"
        "print(set(mpc_policy.__all__) <= set(dir(mpc_policy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True", "True", "True"]
