"""The contract with the user's models: what a cost, a dynamics model and a constraint module
are, how they are called and checked (``contract``, ``constraints``, ``validation``), and their
local models (``linearize``, ``module_model``: the one model type the solve loop sees).
"""
