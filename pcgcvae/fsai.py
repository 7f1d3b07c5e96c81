"""Classical factorized sparse approximate inverse (FSAI).

For a lower-triangular pattern S with the diagonal, row i of the FSAI factor
is ``y / sqrt(y_i)`` with ``A[J, J] y = e_i`` and J = S_i.  It is the exact
minimiser of the Kaporin number of G A Gᵀ over factors on S, and G A Gᵀ has
unit diagonal.  Rows are solved in batches of equal pattern size with
NumPy's batched dense solver (the small dense systems PETSc has no kernel
for).
"""

from __future__ import annotations

import numpy as np

from .csr import CSR
from .errors import OperatorError

_CHUNK_ENTRIES = 4_000_000  # rows * k * k per batched solve (about 32 MB)


def fsai_values(a: CSR, s: CSR, rows: np.ndarray | None = None,
                global_index: np.ndarray | None = None) -> np.ndarray:
    """FSAI factor values aligned with ``s.data`` (rows outside ``rows`` left 0).

    ``a`` is the (scaled) SPD matrix, ``s`` the lower pattern including the
    diagonal as the last entry of every row; A[J, J] is read from A's lower
    triangle and mirrored (A is symmetric: the symmetry check sees to that).
    """
    g = np.zeros(s.nnz)
    lengths = np.diff(s.indptr)
    todo = np.arange(s.n) if rows is None else np.asarray(rows, dtype=np.int64)
    diag = a.diagonal()
    for k in np.unique(lengths[todo]):
        group = todo[lengths[todo] == k]
        chunk = max(1, _CHUNK_ENTRIES // int(k * k))
        ar = np.arange(k)
        below, above = np.tril_indices(k, -1)
        for start in range(0, len(group), chunk):
            rows_k = group[start : start + chunk]
            pos = s.indptr[rows_k][:, None] + ar[None, :]  # (m, k) positions in s
            cols = s.indices[pos]  # increasing along each row: the pairs below the diagonal are A's lower entries
            sub = np.empty((len(rows_k), k, k))
            sub[:, below, above] = a.lookup(cols[:, below], cols[:, above])  # A symmetric: half the lookups
            sub[:, above, below] = sub[:, below, above]
            sub[:, ar, ar] = diag[cols]
            rhs = np.zeros((len(rows_k), k))
            rhs[:, -1] = 1.0
            try:
                y = np.linalg.solve(sub, rhs[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError as exc:
                raise OperatorError(
                    "FSAI: a local submatrix A[J,J] is singular; the operator is not SPD"
                ) from exc
            ylast = y[:, -1]
            bad = np.flatnonzero(~(ylast > 0) | ~np.isfinite(ylast))
            if len(bad):
                r = int(rows_k[bad[0]])
                r = r if global_index is None else int(global_index[r])
                raise OperatorError(
                    f"FSAI: the submatrix A[J,J] of row {r} is not positive definite; "
                    "the operator is not SPD"
                )
            g[pos] = y / np.sqrt(ylast)[:, None]
    return g


def kaporin_score(g: np.ndarray, s: CSR) -> float:
    """-(2/n) Σ log G_ii of a row-normalised factor (diag(G A Gᵀ) = 1).

    Equals (1/n) log K(G A Gᵀ) + (1/n) log det A: the Kaporin number up to a
    constant that does not depend on G.  Lower is better; FSAI is the minimum.
    """
    diag = g[s.indptr[1:] - 1]
    return float(-2.0 * np.mean(np.log(diag)))
