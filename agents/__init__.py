"""Learning with the MPC policy: expert datasets, behaviour cloning of nominal action
sequences (the paper's imitation experiments, section 5.3), the sysid and nn baselines,
evaluation in the environments, and the ``mpc-policy`` command line.

    from mpc_policy.agents.config import load_config
    from mpc_policy.agents.run import pipeline
    config = load_config("configs/pendulum_dx.yaml", profile="quick")
    pipeline.run(config)          # collect, train, evaluate; files under config.run_dir
"""
