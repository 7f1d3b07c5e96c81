"""Local sparse matrices as CSR arrays, with the checks and the scaling
D^-1/2 A D^-1/2 that everything downstream relies on.

These are plain NumPy arrays taken from (or given to) PETSc matrices with
``getValuesCSR`` / ``createAIJ``; they let the network and the training code
run without PETSc.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import OperatorError

LOOKUP_CHUNK = 1 << 20  # queries per scipy indexing call in CSR.lookup / contains (bounds their temporaries)


def csr_index_dtype(n: int, nnz: int) -> type:
    """The integer type of a CSR's index arrays: int32 (PETSc's default ``PetscInt``, so arrays
    taken from or given to PETSc are not copied) while the size and the entry count fit, else int64.
    Products of indices (entry keys ``row * n + col``) are formed in int64 (:meth:`CSR.rows`)."""
    return np.int32 if max(n, nnz) < 2**31 else np.int64


@dataclass
class CSR:
    """A square local matrix in CSR form with sorted column indices per row.

    The index arrays are int32 while they fit (:func:`csr_index_dtype`), the values float64."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    def __post_init__(self) -> None:
        itype = csr_index_dtype(len(self.indptr) - 1, len(self.indices))
        self.indptr = np.ascontiguousarray(self.indptr, dtype=itype)
        self.indices = np.ascontiguousarray(self.indices, dtype=itype)
        self.data = np.ascontiguousarray(self.data, dtype=np.float64)

    @property
    def n(self) -> int:
        """Number of rows (and columns)."""
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def rows(self, dtype: type = np.int64) -> np.ndarray:
        """Row index of every stored entry (int64 by default: ``rows() * n + indices`` does not overflow)."""
        return np.repeat(np.arange(self.n, dtype=dtype), np.diff(self.indptr))

    def keys(self) -> np.ndarray:
        """Entry keys ``row * n + col``; strictly increasing for sorted CSR (computed on each call:
        8 bytes per entry are not kept alive with the matrix)."""
        return self.rows() * self.n + self.indices

    def scipy(self, data: np.ndarray | None = None) -> sp.csr_array:
        """This matrix (or its structure with ``data``) as a scipy CSR array sharing the arrays."""
        return sp.csr_array((self.data if data is None else data, self.indices, self.indptr), shape=(self.n, self.n))

    def lookup(self, r: np.ndarray, c: np.ndarray, chunk: int = LOOKUP_CHUNK) -> np.ndarray:
        """Values A[r, c] (0 where no entry is stored), of the broadcast shape of ``r`` and ``c``:
        scipy's indexing (a binary search per query in C), ``chunk`` queries at a time."""
        return self._indexed(self.data, np.float64, r, c, chunk)

    def positions(self, r: np.ndarray, c: np.ndarray, chunk: int = LOOKUP_CHUNK) -> np.ndarray:
        """Position in ``data`` of each entry (r, c), -1 where none is stored, of the broadcast shape of
        ``r`` and ``c`` (int32 while nnz fits): :meth:`lookup` of the integers 1..nnz, less 1."""
        dtype = np.int32 if self.nnz < 2**31 - 1 else np.int64
        out = self._indexed(np.arange(1, self.nnz + 1, dtype=dtype), dtype, r, c, chunk)
        out -= 1
        return out

    def _indexed(self, data: np.ndarray, dtype: type, r: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
        """``data`` (on this structure) at (r, c), 0 where no entry is stored, ``chunk`` queries at a time."""
        r, c = np.asarray(r), np.asarray(c)
        shape = np.broadcast_shapes(r.shape, c.shape)
        r, c = np.broadcast_to(r, shape).ravel(), np.broadcast_to(c, shape).ravel()
        out = np.zeros(len(r), dtype=dtype)
        if self.nnz == 0 or len(r) == 0:
            return out.reshape(shape)
        a = self.scipy(data)
        for q0 in range(0, len(r), chunk):
            out[q0:q0 + chunk] = a[r[q0:q0 + chunk], c[q0:q0 + chunk]]
        return out.reshape(shape)

    def contains(self, other: CSR) -> bool:
        """Whether every stored entry of ``other`` (same size) is stored in this matrix (rows in
        blocks of about ``LOOKUP_CHUNK`` entries: no O(nnz) temporaries)."""
        r0 = 0
        while r0 < other.n:
            r1 = max(r0 + 1, int(np.searchsorted(other.indptr, int(other.indptr[r0]) + LOOKUP_CHUNK, side="right")) - 1)
            r1 = min(r1, other.n)
            e0, e1 = int(other.indptr[r0]), int(other.indptr[r1])
            a0, a1 = int(self.indptr[r0]), int(self.indptr[r1])
            mine = sp.csr_array((np.ones(a1 - a0), self.indices[a0:a1], self.indptr[r0:r1 + 1] - a0),
                                shape=(r1 - r0, self.n))  # this block's pattern, 1 where stored
            rows = np.repeat(np.arange(r1 - r0), np.diff(other.indptr[r0:r1 + 1]))
            if e1 > e0 and not np.all(mine[rows, other.indices[e0:e1]]):
                return False
            r0 = r1
        return True

    def diagonal(self) -> np.ndarray:
        return self.scipy().diagonal()

    def lower(self) -> CSR:
        """The lower triangle including the diagonal."""
        return self.select(self.indices <= self.rows())

    def select(self, mask: np.ndarray) -> CSR:
        """The entries where ``mask`` holds, as a new CSR."""
        counts = np.bincount(self.rows()[mask], minlength=self.n)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return CSR(indptr, self.indices[mask], self.data[mask])

    def with_data(self, data: np.ndarray) -> CSR:
        """Same structure (shared index arrays), new values."""
        return CSR(self.indptr, self.indices, data)

    def row_positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the given rows, in that order: the indptr of their concatenation and each of its entries'
        position in ``indices``/``data`` (both in the index type)."""
        itype = self.indptr.dtype
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(lengths) + 1, dtype=itype)
        np.cumsum(lengths, out=indptr[1:])
        positions = np.repeat(self.indptr[rows] - indptr[:-1], lengths)
        positions += np.arange(len(positions), dtype=itype)
        return indptr, positions

    def take_rows(self, rows: np.ndarray) -> CSR:
        """The given rows (in that order), columns unchanged; a run of consecutive rows is a slice
        (all rows: this matrix itself)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            if r0 == 0 and r1 == self.n:
                return self
            e0, e1 = int(self.indptr[r0]), int(self.indptr[r1])
            return CSR(self.indptr[r0:r1 + 1] - e0, self.indices[e0:e1], self.data[e0:e1])
        indptr, pos = self.row_positions(rows)
        return CSR(indptr, self.indices[pos], self.data[pos])

    def lower_count(self, rows: np.ndarray, chunk: int = 1 << 15) -> int:
        """nnz of the lower triangle (diagonal included) in the given rows, ``chunk`` rows at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        total = 0
        for r0 in range(0, len(rows), chunk):
            r = rows[r0:r0 + chunk]
            part = self.take_rows(r)
            total += int(np.count_nonzero(part.indices <= np.repeat(r, np.diff(part.indptr))))
        return total

    def sorted_check(self) -> None:
        """Raise unless column indices are strictly increasing in every row."""
        if self.nnz == 0:
            return
        step = np.diff(self.indices) > 0
        starts = self.indptr[1:-1]
        step[starts[(starts > 0) & (starts < self.nnz)] - 1] = True  # a row's first entry follows another row
        if not np.all(step):
            raise OperatorError("CSR column indices are not sorted and unique in every row")


def check_operator(a: CSR, global_index: np.ndarray | None = None) -> None:
    """Raise :class:`OperatorError` naming the first problem of ``a``.

    Checks: finite entries, a strictly positive diagonal (so a row with no
    stored entries is refused).  An empty block (a rank that owns no rows, as
    on GAMG's coarse levels) passes.  ``global_index`` maps local row/column
    numbers to global ones in messages.
    """
    gi = np.arange(a.n) if global_index is None else np.asarray(global_index)
    bad = np.flatnonzero(~np.isfinite(a.data))
    if len(bad):
        r = int(a.rows()[bad[0]])
        raise OperatorError(
            f"operator has a non-finite entry {a.data[bad[0]]} at row {gi[r]}, "
            f"column {gi[int(a.indices[bad[0]])]} ({len(bad)} non-finite entries)"
        )
    d = a.diagonal()
    bad = np.flatnonzero(~(d > 0))
    if len(bad):
        r = int(bad[0])
        empty = " (the row has no stored entries)" if a.indptr[r] == a.indptr[r + 1] else ""
        raise OperatorError(
            f"operator has a non-positive diagonal entry A[{gi[r]},{gi[r]}] = {d[r]}{empty} "
            f"({len(bad)} such rows); an SPD operator is required"
        )


def scale_symmetric(a: CSR) -> tuple[CSR, np.ndarray]:
    """Return (Â, D^-1/2) with Â = D^-1/2 A D^-1/2 and D = diag(A).

    ``a`` must have passed :func:`check_operator`.
    """
    dinv = 1.0 / np.sqrt(a.diagonal())
    data = a.data * np.repeat(dinv, np.diff(a.indptr))
    data *= dinv[a.indices]
    return a.with_data(data), dinv


ROW_CHUNK = 1 << 16  # rows per block in normalise_rows: bounds the temporary G Â block (~20 MB at level 1)


def normalise_rows(g: CSR, ahat: CSR, chunk: int = ROW_CHUNK) -> np.ndarray:
    """Values of G scaled so that diag(G Â Gᵀ) = 1: q_i = (G Â Gᵀ)_ii = Σ_k (G Â)_ik G_ik, with
    scipy.sparse products on blocks of ``chunk`` rows (the temporary G Â block stays small).

    Raises :class:`OperatorError` when some q_i <= 0 (the operator is not SPD)."""
    n = g.n
    G = sp.csr_matrix((g.data, g.indices, g.indptr), shape=(n, n))
    A = sp.csr_matrix((ahat.data, ahat.indices, ahat.indptr), shape=(n, n))
    q = np.empty(n)
    for start in range(0, n, chunk):
        block = G[start:start + chunk]
        q[start:start + chunk] = np.asarray((block @ A).multiply(block).sum(axis=1)).ravel()
    if not np.all(q > 0):
        raise OperatorError("a factor row has (G Â Gᵀ)_ii <= 0; the operator is not SPD")
    return g.data / np.sqrt(q)[g.rows()]


def structure_digest(*arrays: np.ndarray) -> tuple:
    """A fingerprint of arrays (a nonzero structure ``indptr, indices``, or values): their lengths and
    a SHA-1 digest of their bytes (not for security: twice BLAKE2b's speed where the CPU has SHA
    instructions, 3 ms for the 5.6 MB of values of a 10^5-row P1 operator).  Caches compare it instead of
    keeping copies of the arrays."""
    h = hashlib.sha1(usedforsecurity=False)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8))
    return (tuple(len(a) for a in arrays), h.digest())
