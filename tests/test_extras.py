"""Optional dependencies (pyproject's extras): the core imports none of them, and asking for
what needs one (a frame, a GIF, a figure) without it raises an ImportError naming the extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpc_policy.envs.extras import EXTRAS, MissingExtraError, import_optional

ROOT = Path(__file__).resolve().parents[1]
DRAWING = ("pygame", "matplotlib", "PIL")


def run(script: str, tmp_path: Path) -> str:
    """Run a script in a fresh interpreter outside the repository (this worktree first on
    the path), as an installed user would; its stdout."""
    env_path = f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
    out = subprocess.run(
        [sys.executable, "-c", env_path + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MPC_POLICY_BACKEND": "torch"},
    )
    return out.stdout


def test_the_extras_are_declared_and_not_required():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"]).lower()
    extras = project["optional-dependencies"]
    assert not any(name.lower() in required for name in ("pygame", "matplotlib", "pillow"))
    assert any(d.startswith("pygame") for d in extras["render"])
    assert any(d.startswith("pillow") for d in extras["render"])
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert "mpc-policy[render,plot]" in extras["test"]  # CI installs .[test]: those tests run
    assert set(EXTRAS) <= set(extras)


def test_the_core_imports_no_drawing_package(tmp_path):
    """Solving, stepping every environment, behaviour cloning and the command line's modules
    import neither pygame, nor matplotlib, nor Pillow (nor minari: its module imports it
    lazily)."""
    script = (
        "import sys, gymnasium, torch, mpc_policy\n"
        "from mpc_policy import MPC, MPCPolicy\n"
        "from mpc_policy.agents.data import minari_io, rollouts\n"
        "from mpc_policy.agents.run import cli, evaluate, pipeline\n"
        "from mpc_policy.agents.train import bc\n"
        "from mpc_policy.envs import ENTRY_POINTS, VARIANTS\n"
        "for env_id in [*ENTRY_POINTS, *VARIANTS]:\n"
        "    env = gymnasium.make(env_id)\n"
        "    env.reset(seed=0)\n"
        "    env.step(env.action_space.sample())\n"
        "    env.close()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {(*DRAWING, 'minari')!r}))\n"
    )
    assert run(script, tmp_path).strip() == "[]"


BLOCKED = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # import fails\n"


@pytest.mark.parametrize(
    ("blocked", "action", "extra"),
    [
        (
            ("pygame",),
            "import gymnasium, mpc_policy\n"
            "env = gymnasium.make('mpc_policy/Pendulum-v0', render_mode='rgb_array')\n"
            "env.reset(seed=0)\nenv.render()\n",
            "render",
        ),
        (
            ("imageio", "imageio.v2", "PIL", "PIL.Image"),
            "import numpy as np\nfrom mpc_policy.agents.run.evaluate import save_gif\n"
            "save_gif([np.zeros((4, 4, 3), np.uint8)], 'x.gif')\n",
            "render",
        ),
        (("matplotlib",), "import mpc_policy.agents.experiments.plots\n", "plot"),
        (
            ("matplotlib", "matplotlib.pyplot"),
            "from mpc_policy.compat.env_dx.common import pole_frame\npole_frame(0, 0, 1, 2)\n",
            "plot",
        ),
    ],
    ids=["render", "gif", "figures", "compat_get_frame"],
)
def test_a_missing_extra_is_named(blocked, action, extra, tmp_path):
    script = (
        BLOCKED.format(names=blocked)
        + "try:\n"
        + "".join(f"    {line}\n" for line in action.splitlines())
        + "except ImportError as error:\n    print('ImportError:', error)\n"
    )
    out = run(script, tmp_path)
    assert f'pip install "mpc-policy[{extra}]"' in out, out


def test_import_optional():
    assert import_optional("matplotlib", "plot", "figures").__name__ == "matplotlib"
    with pytest.raises(ValueError, match="extra"):
        import_optional("scipy", "plot", "figures")
    assert issubclass(MissingExtraError, ImportError)
