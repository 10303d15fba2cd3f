"""Expert data: the MPC expert, the batched rollouts, the datasets (``.npz``, Minari) and
atomic writes.
"""
