"""The paper's experiments (Amos et al., 2018, sections 5.2 to 5.4), one command each.

    python -m mpc_policy.agents.experiments.lqr_imitation --config configs/exp_lqr_imitation.yaml \
        --profile quick

Each command reads a YAML config with profiles (``runner``), runs its trials through the sweep
engine (``sweep``: local processes by default, Ray as an option), skipping trials that already
finished, and writes a summary table and a figure.
"""
