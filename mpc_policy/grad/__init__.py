"""How a solution is differentiated: the gradient rules behind one seam (``attach``), the
implicit LQR autograd function (``implicit_lqr``), the LQR data at a fixed point
(``fixed_point``) and the constrained KKT rule (``kkt``).
"""
