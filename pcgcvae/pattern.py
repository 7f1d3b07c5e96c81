"""Lower-triangular factor patterns S built from the scaled operator Â.

Level 1 is tril(Â).  Level k > 1 is tril(Â^k) with entries below a threshold
dropped (entries of Â are always kept); the powers are PETSc ``MatMatMult``
products.  The pattern always holds the diagonal, last in every row.
"""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

from .csr import CSR
from .errors import OptionError
from .petsc_csr import mat_to_csr

MAX_LEVEL = 3


def factor_pattern(ahat: CSR, ahat_mat: PETSc.Mat, level: int, threshold: float) -> tuple[CSR, np.ndarray | None]:
    """Return (S, Â² values on S or None).  ``S.data`` holds Â's values on S."""
    if not 1 <= level <= MAX_LEVEL:
        raise OptionError(f"pattern level must be between 1 and {MAX_LEVEL}, got {level}")
    if level == 1:
        return ahat.lower(), None
    power = ahat_mat
    a2 = None
    for k in range(2, level + 1):
        power = power.matMult(ahat_mat)
        if k == 2:
            a2 = mat_to_csr(power)
    pk = mat_to_csr(power)
    rows = pk.rows()
    in_a = ahat.lookup(rows, pk.indices) != 0
    keep = (pk.indices <= rows) & ((np.abs(pk.data) >= threshold) | in_a)
    s = pk.select(keep)
    s = s.with_data(ahat.lookup(s.rows(), s.indices))
    return s, a2.lookup(s.rows(), s.indices)
