"""The symmetry check of the factored preconditioners' setup.

CG and a factored approximate inverse M = GᵀG need a symmetric operator; a
numerically nonsymmetric one (Dirichlet rows eliminated on one side only, as in
several PETSc DMDA examples) would otherwise run CG to ``max_it`` without a
word.  The check measures the largest |Â_ij − Â_ji| of the scaled operator
Â = D^-1/2 A D^-1/2 (scale-free: |a_ij − a_ji| / sqrt(a_ii a_jj)) and names
the global row and column where it is.

* Each rank's (possibly overlapped) local block: :func:`check_local` on its CSR
  arrays (one scipy transpose).
* Several ranks: :func:`check_couplings` on the entries that couple rows of
  different ranks, each compared by the rank that owns its transpose.  It is
  collective and raises the same error on every rank.
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
        gap = np.subtract(a.data, t.data)
        del t
        diff = sp.csr_array((np.abs(gap, out=gap), a.indices, a.indptr), shape=(a.n, a.n))
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


def check_couplings(P: PETSc.Mat, tol: float, name: str, option: str) -> None:
    """Collective: the check on the couplings between ranks of a distributed operator (each
    rank's diagonal block is checked by :func:`check_local`).

    Every rank sends each of its entries a_ij whose column j another rank owns, with a_ii, to
    that rank, which compares it with its own a_ji (0 when absent) scaled by sqrt(a_ii a_jj);
    one allgather picks the worst pair and every rank raises the same error.  Only the
    couplings travel (O(interface) data), so the cost is a small part of a setup."""
    if "sbaij" in P.getType():  # symmetric by storage
        return
    mpicomm = P.getComm().tompi4py()
    aij = P.convert(PETSc.Mat.Type.AIJ, PETSc.Mat()) if "baij" in P.getType() else P
    lo, hi = aij.getOwnershipRange()
    ranges = np.asarray(aij.getOwnershipRanges())
    indptr, indices, data = aij.getValuesCSR()
    indptr, indices, data = np.asarray(indptr, np.int64), np.asarray(indices, np.int64), np.real(data)
    rows = np.repeat(np.arange(lo, hi, dtype=np.int64), np.diff(indptr))
    diag = np.zeros(hi - lo)
    on_diag = rows == indices
    diag[rows[on_diag] - lo] = data[on_diag]
    remote = (indices < lo) | (indices >= hi)
    r_rows, r_cols, r_vals = rows[remote], indices[remote], data[remote]
    owner = np.searchsorted(ranges, r_cols, side="right") - 1
    sends = [None] * mpicomm.size
    for dest in np.unique(owner):
        k = owner == dest
        sends[dest] = (r_rows[k], r_cols[k], r_vals[k], diag[r_rows[k] - lo])
    mine = (0.0, -1, -1, 0.0, 0.0)
    keys = (rows - lo) * aij.getSize()[1] + indices  # sorted: rows in order, columns sorted per row
    for got in mpicomm.alltoall(sends):
        if got is None:
            continue
        i, j, a_ij, d_i = got  # a_ij from another rank; j is ours
        want = (j - lo) * aij.getSize()[1] + i
        pos = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
        a_ji = np.where(keys[pos] == want, data[pos], 0.0) if len(keys) else np.zeros(len(want))
        d_j = diag[j - lo]
        ok = (d_i > 0) & (d_j > 0) & np.isfinite(d_i) & np.isfinite(d_j)
        scale = np.ones_like(d_i)
        scale[ok] = 1.0 / np.sqrt(d_i[ok] * d_j[ok])
        diff = np.abs(a_ij - a_ji) * scale
        if len(diff):
            k = int(np.argmax(diff))
            if diff[k] > mine[0]:
                mine = (float(diff[k]), int(i[k]), int(j[k]), float(a_ij[k] * scale[k]), float(a_ji[k] * scale[k]))
    worst, row, col, v_ij, v_ji = max(mpicomm.allgather(mine))
    if worst > tol:
        raise _error(name, option, worst, tol, row, col, v_ij, v_ji)
