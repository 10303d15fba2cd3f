"""Running an experiment: the ``mpc-policy`` command, the resolved experiment, the pipeline
(collect -> train -> evaluate, sequenced by ``pipeline.run`` alone), the report and the
provenance of results. The YAML configs are read by ``mpc_policy.agents.config``.
"""
