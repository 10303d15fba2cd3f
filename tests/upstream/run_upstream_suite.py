"""Run mpc.pytorch's own test suite against mpc.pytorch and against ``mpc_policy.compat``.

The acceptance test of the compatibility layer (issue 14): every test of mpc.pytorch's
``tests/`` that passes on mpc.pytorch must pass with only the import lines changed to
``mpc_policy.compat``. Nothing of mpc.pytorch is kept in this repository; point the script
at a checkout (or a bare git directory) of locuslab/mpc.pytorch:

    python tests/upstream/run_upstream_suite.py PATH [--out DIR]

It needs an environment with mpc.pytorch (PyPI ``mpc``, numpy < 2), pytest, cvxpy,
numdifftools and psutil (e.g. ``.venv-bench``). The suite is copied twice into DIR:

- ``upstream/``: as it is, apart from two fixes of the environment applied to both copies:
  ``numpy.testing.dec`` (gone from numpy >= 1.25) becomes ``pytest.mark.skipif``, and the
  unused ``from block import block`` (a package that no longer builds) is dropped;
- ``compat/``: the same, with every ``mpc`` import pointed at ``mpc_policy.compat``;
- ``install/``: the imports left alone, and a ``conftest.py`` calling
  ``mpc_policy.compat.install()``, so ``import mpc`` resolves to the compat layer;

then pytest runs each copy and the table test | upstream | compat | install is printed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

FILES = ("tests/test_dynamics.py", "tests/test_mpc.py")

# the same two environment fixes on both sides
ENVIRONMENT = (
    (r"^from numpy\.testing import dec\n", "import pytest\n"),
    (r"^@dec\.skipif\((.*)\)$", r'@pytest.mark.skipif(\1, reason="needs CUDA")'),
    (r"^from block import block\n", ""),
)
# the import change of the compat side, and nothing else
IMPORTS = (
    (r"^from mpc import ", "from mpc_policy.compat import "),
    (r"^from mpc\.(\w+) import ", r"from mpc_policy.compat.\1 import "),
    (r"^import mpc\.(\w+)", r"import mpc_policy.compat.\1"),
)

INSTALL = """import sys

import mpc_policy.compat

mpc_policy.compat.install()
assert sys.modules["mpc"] is mpc_policy.compat
"""


def read(source: Path, name: str) -> str:
    """A file of the checkout (a work tree, or a git directory read at HEAD)."""
    if (source / name).is_file():
        return (source / name).read_text()
    out = subprocess.run(
        ["git", "--git-dir", str(source), "show", f"HEAD:{name}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def rewrite(text: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    return text


def run(folder: Path, python: str) -> dict[str, str]:
    """pytest on a folder; the outcome of each test, by name."""
    report = folder / "report.xml"
    subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "."],
        cwd=folder,
        check=False,
    )
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{Path(case.get('classname', '').replace('.', '/')).name}::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
        outcomes[name] = outcome
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="mpc.pytorch checkout or git directory")
    parser.add_argument("--out", type=Path, default=None, help="folder for the two copies")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run pytest")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="mpc-upstream-"))
    results = {}
    sides = (("upstream", ENVIRONMENT), ("compat", ENVIRONMENT + IMPORTS), ("install", ENVIRONMENT))
    for side, rules in sides:
        folder = out / side
        folder.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            (folder / Path(name).name).write_text(rewrite(read(args.source, name), rules))
        if side == "install":
            (folder / "conftest.py").write_text(INSTALL)
        results[side] = run(folder, args.python)
    names = sorted(set().union(*results.values()))
    print("\n| test | upstream | compat | install |\n| --- | --- | --- | --- |")
    for name in names:
        cells = " | ".join(results[side].get(name, "missing") for side, _ in sides)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
