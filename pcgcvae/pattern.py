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


def factor_pattern(ahat: CSR, ahat_mat: PETSc.Mat, level: int, threshold: float,
                   reuse: dict | None = None) -> tuple[CSR, np.ndarray | None]:
    """Return (S, Â² values on S or None).  ``S.data`` holds Â's values on S.

    ``reuse``: a dict the caller keeps between calls on the same structure of Â (``ahat_mat`` refilled
    with new values): the first call stores in it the powers Â^k and, per level, where tril(Â^level)
    lies among Â^level's entries and Â's entries among those; later calls refill the powers in place
    (PETSc's ``MAT_REUSE_MATRIX``: no second symbolic product) and gather values."""
    if not 1 <= level <= MAX_LEVEL:
        raise OptionError(f"pattern level must be between 1 and {MAX_LEVEL}, got {level}")
    if level == 1:
        return ahat.lower(), None
    reuse = {} if reuse is None else reuse
    power, a2 = ahat_mat, None
    for k in range(2, level + 1):
        power = reuse[k] = power.matMult(ahat_mat, result=reuse.get(k))
        if k == 2 and level > 2:
            a2 = mat_to_csr(power)
    pk = mat_to_csr(power)
    if ("tril", level) not in reuse:
        mask = pk.indices <= pk.rows()
        low = pk.select(mask)
        a_pos = ahat.positions(low.rows(), low.indices)  # -1: not stored in Â
        reuse["tril", level] = (mask, low.indptr, low.indices, a_pos)
    mask, indptr, indices, a_pos = reuse["tril", level]
    low = CSR(indptr, indices, pk.data[mask])  # tril(Â^level)
    del pk
    a_on_low = np.where(a_pos >= 0, ahat.data[np.maximum(a_pos, 0)], 0.0)
    keep = (np.abs(low.data) >= threshold) | (a_on_low != 0)  # entries of Â always kept
    s = low.select(keep).with_data(a_on_low[keep])
    return s, low.data[keep] if a2 is None else a2.lookup(s.rows(), s.indices)
