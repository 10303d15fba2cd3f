"""Compiled CPU kernels (numba) of the solver's numerics; see ``mpc_policy.solve.backend``.

Each module sits beside the torch module it replaces, with the same function signatures:
``box_qp`` (``numerics.box_qp``), ``riccati`` (``numerics.riccati``), ``adjoint``
(``numerics.adjoint``), plus ``rollout`` for affine dynamics and ``box_lqr``, the whole loop
of a bounded LQR problem. Importing this package needs numba; the rest of the library does not.
"""
