"""The symmetry check of the factored preconditioners' setup.

CG and a factored approximate inverse M = GᵀG need a symmetric operator; a
numerically nonsymmetric one (Dirichlet rows eliminated on one side only, as in
several PETSc DMDA examples) would otherwise run CG to ``max_it`` without a
word.  The check measures the largest |Â_ij − Â_ji| of the scaled operator
Â = D^-1/2 A D^-1/2 (scale-free: |a_ij − a_ji| / sqrt(a_ii a_jj)) and names
the global row and column where it is.

* One process: :func:`check_local` on the matrix's CSR arrays (one scipy transpose).
* Several: :func:`check_parallel` on the distributed matrix (PETSc's parallel
  ``MatTranspose`` and ``MatAXPY``), so the couplings between ranks are checked
  as well as each rank's diagonal block.  It is collective and raises the same
  error on every rank.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from petsc4py import PETSc

from .csr import CSR
from .errors import OperatorError


def largest_asymmetry(a: CSR) -> tuple[float, int, int]:
    """max |a_ij - a_ji| over the matrix and one (i, j) where it is attained ((0.0, -1, -1)
    when ``a`` is exactly symmetric).  One transpose (scipy's counting sort); a structurally
    nonsymmetric ``a`` is compared entry by entry (a missing entry counts as 0)."""
    if a.nnz == 0:
        return 0.0, -1, -1
    m = sp.csr_array((a.data, a.indices, a.indptr), shape=(a.n, a.n))
    t = m.T.tocsr()
    t.sort_indices()
    if np.array_equal(t.indptr, a.indptr) and np.array_equal(t.indices, a.indices):
        diff = sp.csr_array((np.abs(a.data - t.data), a.indices, a.indptr), shape=(a.n, a.n))
    else:
        diff = abs(m - t).tocsr()
    if diff.nnz == 0:
        return 0.0, -1, -1
    k = int(np.argmax(diff.data))
    if diff.data[k] == 0:
        return 0.0, -1, -1
    row = int(np.searchsorted(diff.indptr, k, side="right") - 1)
    return float(diff.data[k]), row, int(diff.indices[k])


def _error(name: str, option: str, worst: float, tol: float, row: int, col: int, aij: float,
           aji: float) -> OperatorError:
    return OperatorError(
        f"{name}: the operator is not symmetric: the largest asymmetry |A_ij - A_ji| / sqrt(A_ii A_jj) = "
        f"{worst:.3g} (> {tol:g}) is at row {row}, column {col} (scaled A_ij = {aij:.6g}, A_ji = {aji:.6g}); "
        "CG and a factored approximate inverse need a symmetric positive definite operator (eliminate "
        "Dirichlet rows and columns together, e.g. MatZeroRowsColumns); skip this check with "
        f"-{option} false"
    )


def check_local(ahat: CSR, tol: float, name: str, option: str, global_index: np.ndarray | None = None) -> None:
    """Raise :class:`OperatorError` when the scaled operator ``ahat`` (unit diagonal) has
    |Â_ij - Â_ji| > ``tol`` anywhere, naming the largest asymmetry and where it is
    (``global_index`` maps local to global numbers; ``option`` is the one that skips the check)."""
    worst, i, j = largest_asymmetry(ahat)
    if worst <= tol:
        return
    gi = np.arange(ahat.n) if global_index is None else np.asarray(global_index)
    aij, aji = ahat.lookup(np.array([i]), np.array([j]))[0], ahat.lookup(np.array([j]), np.array([i]))[0]
    raise _error(name, option, worst, tol, int(gi[i]), int(gi[j]), aij, aji)


def check_parallel(P: PETSc.Mat, tol: float, name: str, option: str) -> None:
    """Collective: the same check on a distributed operator, couplings between ranks included.

    D = D^-1/2 (Pᵀ − P) D^-1/2 with PETSc's parallel transpose; each rank finds the largest
    entry of its rows, one allgather picks the worst, and every rank raises the same error.
    Rows with a non-positive or non-finite diagonal are left unscaled (the operator check
    that follows names them)."""
    mtype = P.getType()
    if "sbaij" in mtype:  # symmetric by storage
        return
    comm = P.getComm()
    d = P.getDiagonal()
    diag = d.getArray(readonly=True)
    scale = np.ones_like(diag)
    ok = np.isfinite(diag) & (diag > 0)
    scale[ok] = 1.0 / np.sqrt(diag[ok])
    d.setArray(scale)
    aij = P.convert(PETSc.Mat.Type.AIJ, PETSc.Mat()) if "baij" in mtype else P
    diff = aij.transpose(PETSc.Mat())
    diff.axpy(-1.0, aij, structure=PETSc.Mat.Structure.DIFFERENT_NONZERO_PATTERN)
    diff.diagonalScale(d, d)
    rstart = diff.getOwnershipRange()[0]
    indptr, indices, data = diff.getValuesCSR()
    mine = (0.0, -1, -1)
    if len(data):
        k = int(np.argmax(np.abs(data)))
        row = int(np.searchsorted(indptr, k, side="right") - 1)
        mine = (float(abs(data[k])), rstart + row, int(indices[k]))
    diff.destroy()
    worst, row, col = max(comm.tompi4py().allgather(mine))
    if worst <= tol:
        d.destroy()
        return
    # the two entries and their rows' scales, each read by the rank that owns the row
    lo, hi = P.getOwnershipRange()
    mpicomm = comm.tompi4py()
    mine_entries: dict[tuple[int, int], tuple[float, float]] = {}
    for i, j in ((row, col), (col, row)):
        if lo <= i < hi:
            cols, vals = P.getRow(i)
            hit = np.flatnonzero(cols == j)
            mine_entries[(i, j)] = (float(vals[hit[0]]) if len(hit) else 0.0, float(scale[i - lo]))
    d.destroy()
    entries = {k: v for part in mpicomm.allgather(mine_entries) for k, v in part.items()}
    (v_ij, s_i), (v_ji, s_j) = entries[(row, col)], entries[(col, row)]
    raise _error(name, option, worst, tol, row, col, v_ij * s_i * s_j, v_ji * s_i * s_j)
