"""Compiled CPU kernels (numba) of the solver's numerics; see ``mpc_policy.backend``.

Each module sits beside the torch module it replaces, with the same function signatures:
``box_qp`` (``mpc_policy.box_qp``), ``riccati`` (``mpc_policy.riccati``), ``adjoint``
(``mpc_policy.adjoint``), plus ``rollout`` for affine dynamics. Importing this package needs
numba; the rest of the library does not.
"""
