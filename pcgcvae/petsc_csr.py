"""Moving CSR arrays in and out of PETSc sequential AIJ matrices."""

from __future__ import annotations

import numpy as np
from petsc4py import PETSc

from .csr import CSR


def mat_to_csr(mat: PETSc.Mat) -> CSR:
    """CSR arrays of a sequential matrix (any type: other types are copied to AIJ first;
    the caller's matrix is never converted in place)."""
    if mat.getType() not in (PETSc.Mat.Type.SEQAIJ, PETSc.Mat.Type.AIJ):
        mat = mat.convert(PETSc.Mat.Type.SEQAIJ, PETSc.Mat())  # out of place: the user's type stays
    indptr, indices, data = mat.getValuesCSR()
    out = CSR(indptr, indices, np.real(data))
    out.sorted_check()
    return out


def petsc_arrays(csr: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``csr``'s arrays in PETSc's integer and scalar types (the arrays themselves when their types
    are PETSc's already: no copy)."""
    return (np.asarray(csr.indptr, dtype=PETSc.IntType), np.asarray(csr.indices, dtype=PETSc.IntType),
            np.asarray(csr.data, dtype=PETSc.ScalarType))


def csr_to_mat(csr: CSR, out: PETSc.Mat | None = None) -> PETSc.Mat:
    """A sequential AIJ matrix with the structure and values of ``csr``.

    With ``out`` of the same structure, its values are overwritten in place.
    """
    n = csr.n
    ia, ja, va = petsc_arrays(csr)
    if out is None:
        out = PETSc.Mat().createAIJ(size=(n, n), csr=(ia, ja, va), comm=PETSc.COMM_SELF)
    else:
        out.zeroEntries()
        out.setValuesCSR(ia, ja, va)
        out.assemble()
    return out
