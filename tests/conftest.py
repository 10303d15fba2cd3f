"""One torch thread for the whole suite: with torch's default of one thread per core, a busy
2-core machine ran the suite about 10x slower (one test spun for 25 minutes). The environment
variables reach the subprocesses that tests start (the command line, the examples)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


# The layers whose code each test file exercises, as markers (registered in pyproject.toml;
# docs/solver.md, "The tests of a layer"): ``pytest -m numerics`` runs the tests of
# mpc_policy/numerics/, ``-m "solve or grad"`` those of two layers. A file may belong to
# several; every test file has an entry (tests/test_layers.py checks).
TEST_LAYERS: dict[str, tuple[str, ...]] = {
    "test_backend.py": ("numerics", "solve"),
    "test_bad_inputs.py": ("problem", "api", "envs"),
    "test_bad_inputs_round2.py": ("problem", "grad", "api", "compat"),
    "test_bad_inputs_training.py": ("agents",),
    "test_baselines.py": ("agents",),
    "test_batch_isolation.py": ("solve", "grad", "api"),
    "test_bc.py": ("agents",),
    "test_benchmark_outputs.py": ("project",),
    "test_box_lqr_kernel.py": ("numerics", "solve"),
    "test_box_qp.py": ("numerics",),
    "test_cli.py": ("agents",),
    "test_compat.py": ("compat",),
    "test_compat_modules.py": ("compat",),
    "test_compat_steps.py": ("compat",),
    "test_compiled_ddp.py": ("numerics", "solve"),
    "test_compiled_inputs.py": ("numerics", "solve", "problem"),
    "test_constraints.py": ("problem", "solve", "grad", "api"),
    "test_constraints_cartpole.py": ("envs", "agents"),
    "test_costs.py": ("problem",),
    "test_custom_system.py": ("envs", "agents"),
    "test_datasets.py": ("agents",),
    "test_dynamics_and_linearize.py": ("problem",),
    "test_env_dynamics.py": ("envs",),
    "test_envs.py": ("envs",),
    "test_examples.py": ("project",),
    "test_experiments.py": ("agents",),
    "test_expert.py": ("agents",),
    "test_extras.py": ("project",),
    "test_kernel_cache.py": ("numerics",),
    "test_layers.py": ("project",),
    "test_local_model.py": ("numerics", "api"),
    "test_logging.py": ("agents",),
    "test_lqr.py": ("solve", "grad", "api"),
    "test_minari_io.py": ("agents",),
    "test_mpc.py": ("solve", "grad", "api"),
    "test_newton.py": ("problem", "solve"),
    "test_packaging.py": ("project",),
    "test_policy.py": ("api",),
    "test_policy_acting.py": ("api", "solve"),
    "test_readme.py": ("project",),
    "test_sb3.py": ("sb3",),
    "test_sb3_contrib.py": ("sb3",),
    "test_slew_rate.py": ("api", "grad"),
    "test_solver_contract.py": ("solve", "grad", "api"),
    "test_solver_fastpaths.py": ("numerics", "solve"),
    "test_sweep.py": ("agents",),
    "test_traced_models.py": ("numerics", "problem", "solve"),
    "test_trust_region.py": ("api", "solve", "grad"),
    "test_zoo.py": ("sb3",),
}


def pytest_collection_modifyitems(config, items):
    """Mark each test with the layers of its file (``TEST_LAYERS``)."""
    for item in items:
        for layer in TEST_LAYERS.get(item.path.name, ()):
            item.add_marker(layer)
