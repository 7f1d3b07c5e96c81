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
    power, a2 = ahat_mat, None
    for k in range(2, level + 1):
        power = power.matMult(ahat_mat)
        if k == 2 and level > 2:
            a2 = mat_to_csr(power)
    pk = mat_to_csr(power)
    low = pk.select(pk.indices <= pk.rows())  # tril(Â^level)
    del pk
    a_on_low = ahat.lookup(low.rows(), low.indices)
    keep = (np.abs(low.data) >= threshold) | (a_on_low != 0)  # entries of Â always kept
    s = low.select(keep).with_data(a_on_low[keep])
    return s, low.data[keep] if a2 is None else a2.lookup(s.rows(), s.indices)
