"""Running an experiment: the ``mpc-policy`` command, its YAML configs, the pipeline
(collect -> train -> evaluate), the report and the provenance of results.
"""
