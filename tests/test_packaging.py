"""Import names: the folders envs/ and agents/ are the packages mpc_policy.envs and
mpc_policy.agents (through links in mpc_policy/), so nothing generic lands on a user's path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_IMPORT = re.compile(r"^\s*(from|import)\s+(envs|agents)\b", re.MULTILINE)


def test_the_folders_are_subpackages_of_mpc_policy():
    for name in ("envs", "agents"):
        link = ROOT / "mpc_policy" / name
        assert link.is_symlink() and link.resolve() == ROOT / name


def test_the_wheel_holds_only_mpc_policy():
    found = setuptools.find_packages(where=str(ROOT), include=["mpc_policy*"])
    for name in ("mpc_policy.envs", "mpc_policy.agents", "mpc_policy.agents.experiments"):
        assert name in found
    assert not [p for p in found if not p.startswith("mpc_policy")]


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
        "importlib.import_module('mpc_policy.box_qp')\n"
        "from mpc_policy import MPC, box_qp, lqr_solve\n"
        "print(callable(box_qp) and not isinstance(box_qp, type(sys)), 'torch' in sys.modules)\n"
        "print(set(mpc_policy.__all__) <= set(dir(mpc_policy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True", "True", "True"]
