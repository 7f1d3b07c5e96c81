"""The scaling command's DMDA stencils assembled on 2 and 3 ranks are the textbook Laplacians in the
DMDA's PETSc numbering (each rank builds only its own rows)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from petsc4py import PETSc

from pcgcvae.scaling import STENCILS, stencil_matrix, stencil_nnz


@pytest.mark.parametrize("stencil,m", [("5pt", 7), ("7pt", 5)])
def test_parallel_stencil_matrix(comm, stencil: str, m: int) -> None:
    A, da = stencil_matrix(stencil, m)
    dim = STENCILS[stencil]
    n = m**dim
    assert A.getSize() == (n, n)
    assert int(A.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"]) == stencil_nnz(stencil, m)
    # natural index -> PETSc index, from the DMDA's own application ordering
    perm = np.asarray(da.getAO().app2petsc(np.arange(n, dtype=PETSc.IntType)))
    lo, hi = A.getOwnershipRange()
    indptr, indices, data = A.getValuesCSR()
    got = sp.csr_matrix((data, indices, indptr), shape=(hi - lo, n))
    t = sp.diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1])
    want = sp.csr_matrix((n, n))
    for d in range(dim):
        factors = [t if e == d else sp.identity(m) for e in range(dim)][::-1]
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f)
        want = want + term
    want = sp.csr_matrix(want)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    want_petsc = want[inv][:, inv]  # row p of the PETSc-numbered matrix is natural row inv[p]
    assert abs(got - want_petsc[lo:hi]).max() == 0
    A.destroy()
    da.destroy()
