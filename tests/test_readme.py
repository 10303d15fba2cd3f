"""Every ```python block of README.md and docs/*.md runs as written; the README's first
example fits in 20 lines; the README's commands match .ci/run.

The blocks of one page run in order in one namespace (a page reads top to bottom), in a
fresh working folder. A block that takes too long for CI (a real training run) is preceded
by a marker naming the shortened equivalent that runs instead, as replacements of its text:

    <!-- ci-shorten: {"model.learn(4096": "model.learn(64"} -->

Each replaced text must occur in the block, so a marker cannot outlive what it shortens.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- ci-shorten: (?P<shorten>\{.*?\}) -->\n)?```python\n(?P<code>.*?)^```",
    flags=re.S | re.M,
)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code to run) of each ```python block of a page, shortened where marked."""
    text = page.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        code = match["code"]
        for old, new in json.loads(match["shorten"] or "{}").items():
            assert old in code, f"{page.name}: the ci-shorten text {old!r} is not in its block"
            code = code.replace(old, new)
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, code))
    return blocks


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


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_block_runs_as_written(page, tmp_path, monkeypatch):
    blocks = python_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no python block")
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    namespace: dict[str, object] = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a page's example warns of nothing
        for line, code in blocks:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_a_shorten_marker_must_match_its_block(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text('<!-- ci-shorten: {"learn(9)": "learn(1)"} -->\n```python\nx = 1\n```\n')
    with pytest.raises(AssertionError, match="learn"):
        python_blocks(page)
    page.write_text('<!-- ci-shorten: {"(9)": "(1)"} -->\n```python\nn = int(9)\n```\n')
    assert python_blocks(page) == [(3, "n = int(1)\n")]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q' in readme
    assert 'pip install -e ".[test]" && python -m pytest -q' in ci
    assert "torch==2.13.0" in ci
