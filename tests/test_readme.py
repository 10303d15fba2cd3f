"""The README's example runs as written, and the README's commands match .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no python example"
    assert len(blocks[0].strip().splitlines()) <= 20
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    solution = namespace["solution"]
    assert bool(solution.info.converged.all())  # type: ignore[attr-defined]
    assert namespace["dynamics"].g.grad is not None  # type: ignore[attr-defined]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q' in readme
    assert 'pip install -e ".[test]" && python -m pytest -q' in ci
    assert "torch==2.13.0" in ci
