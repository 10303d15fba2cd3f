"""The solver's numerics: tensors in, tensors out; no user code, no solver state.

``box_qp`` (projected-Newton box QP), ``riccati`` (the box-LQR backward recursion and the
factorization with a fixed free set, Appendix A), ``adjoint`` (the implicit backward LQR and
eq. (8)), ``condensed`` (the dense solve of tiny problems), and ``compiled/``: their numba twins
with the same signatures, plus the compiled rollout and bounded-LQR loop.
"""
