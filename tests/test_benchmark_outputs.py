"""The benchmark scripts write to a scratch folder unless asked: a run never overwrites the
committed results in benchmarks/results/ (nor the docs' figure) by accident."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("[!_]*.py"))


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _timing

    return _timing


def test_results_go_to_a_scratch_folder_unless_asked(timing, tmp_path):
    parser = argparse.ArgumentParser()
    timing.add_output_argument(parser)
    default = parser.parse_args([]).out
    assert default == timing.SCRATCH_DIR != timing.RESULTS_DIR
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(default / "bench_lqr.json")], cwd=ROOT
    )
    assert ignored.returncode == 0  # the scratch folder is not tracked
    assert parser.parse_args(["--out", "benchmarks/results"]).out == Path("benchmarks/results")
    json_path, csv_path = timing.write_results("demo", [{"a": 1}], {"s": 2}, tmp_path / "out")
    assert json_path.parent == csv_path.parent == tmp_path / "out"
    assert json.loads(json_path.read_text())["records"] == [{"a": 1}]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_takes_out_and_writes_there(script):
    tree = ast.parse(script.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = [getattr(call.func, "id", None) for call in calls]
    assert "add_output_argument" in names, script.name
    writes = [call for call in calls if getattr(call.func, "id", None) == "write_results"]
    assert writes and all(len(call.args) == 4 for call in writes), script.name
    text = script.read_text()
    assert 'docs" / "figures' not in text and "RESULTS_DIR" not in text, script.name


def test_the_readme_recipe_installs_the_dependencies():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    assert "--no-deps" not in section  # it skipped gymnasium, which the benchmarks import
    assert "--out benchmarks/results" in section
