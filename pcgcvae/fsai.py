"""Classical factorized sparse approximate inverse (FSAI).

For a lower-triangular pattern S with the diagonal, row i of the FSAI factor
is ``y / sqrt(y_i)`` with ``A[J, J] y = e_i`` and J = S_i.  It is the exact
minimiser of the Kaporin number of G A Gᵀ over factors on S, and G A Gᵀ has
unit diagonal.  Rows are solved in batches of equal pattern size with
NumPy's batched dense solver (the small dense systems PETSc has no kernel
for).

What the batches need of the nonzero structure -- the rows of each pattern
length and where the entries of every A[J, J] lie in A -- is an
:class:`FSAIPlan`; kept between setups with the same structure, a setup
with new values only gathers them.
"""

from __future__ import annotations

import numpy as np

from .csr import CSR
from .errors import OperatorError

_CHUNK_ENTRIES = 4_000_000  # rows * k * k per batched solve (about 32 MB)
PLAN_BUDGET = 4  # an FSAIPlan keeps the positions of A[J, J] when they number at most this many per nonzero of A
# ... and, once a setup with new values on the same structure asks for them (keep_positions), up to this many: 3D
# P1 elasticity in nested-dissection order has about 6.9 per nonzero (16 bytes per nonzero of A at 4, 32 at 8)
RESETUP_PLAN_BUDGET = 8


class FSAIPlan:
    """The structure-only part of :func:`fsai_values` for one (A, S, rows): the batches (a pattern
    length k and its rows) and -- when they fit ``budget`` -- the positions in A of the entries
    below the diagonal of every row's A[J, J] (int32 while A's nnz fits; nnz(A) where none is stored)."""

    def __init__(self, a: CSR, s: CSR, rows: np.ndarray | None = None, budget: float = PLAN_BUDGET) -> None:
        lengths = np.diff(s.indptr)
        todo = np.arange(s.n) if rows is None else np.asarray(rows, dtype=np.int64)
        self.batches: list[tuple[int, np.ndarray]] = []  # (k, rows)
        for k in np.unique(lengths[todo]):
            k = int(k)
            group = todo[lengths[todo] == k]
            chunk = max(1, _CHUNK_ENTRIES // (k * k))
            for start in range(0, len(group), chunk):
                self.batches.append((k, group[start:start + chunk].astype(s.indptr.dtype)))
        self.pairs = sum(len(r) * k * (k - 1) // 2 for k, r in self.batches)
        # whether the pairs fit a first setup's budget: beyond it, gathering A[J, J] pair by pair also costs more
        # than scipy's products for a row normalisation (3D elasticity, 6.9 per nonzero: 0.35 against 0.26 s)
        self.few_pairs = self.pairs <= PLAN_BUDGET * max(a.nnz, 1)
        self.a_positions: list[np.ndarray] | None = None
        self.missing: list[bool] = []  # per batch: whether some pair is not stored in A
        self.keep_positions(a, s, budget)

    def keep_positions(self, a: CSR, s: CSR, budget: float = RESETUP_PLAN_BUDGET) -> bool:
        """Find and keep the positions of every batch's pairs in A (the structure this plan was made for) if
        they number at most ``budget`` per nonzero of A and are not kept yet; whether they are kept now.
        Finding them costs about what one setup's lookups of A[J, J] do; later setups then gather."""
        if self.a_positions is None and self.pairs <= budget * max(a.nnz, 1):
            marks = a.scipy(np.arange(1, a.nnz + 1, dtype=np.int32 if a.nnz < 2**31 - 1 else np.int64))
            positions, missing = [], []
            for k, rows_k in self.batches:
                below, above = np.tril_indices(k, -1)
                cols = s.indices[_positions(s, rows_k, k)]
                found = _sample(marks, cols[:, below], cols[:, above]) - 1
                found[found < 0] = a.nnz  # not stored in A
                positions.append(found.astype(marks.dtype, copy=False))
                missing.append(bool(np.any(found == a.nnz)))
            self.a_positions, self.missing = positions, missing
        return self.a_positions is not None


    def lower_values(self, a: CSR, batch: int) -> np.ndarray:
        """A's values on batch ``batch``'s pairs below the diagonal of every A[J, J] (0 where not stored)."""
        where = self.a_positions[batch]
        lower = a.data.take(where, mode="clip")
        if self.missing[batch]:
            lower[where == a.nnz] = 0.0
        return lower


def _positions(s: CSR, rows: np.ndarray, k: int) -> np.ndarray:
    """(m, k) positions in ``s`` of the pattern of ``rows`` (each of length k)."""
    return s.indptr[rows].astype(np.int64)[:, None] + np.arange(k)[None, :]


def _sample(a, r: np.ndarray, c: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """a[r, c] for scipy CSR ``a``, of r's shape."""
    if r.size == 0:
        return np.zeros(r.shape, dtype=a.dtype)
    return np.asarray(a[r.ravel(), c.ravel()]).reshape(r.shape)


def fsai_values(a: CSR, s: CSR, rows: np.ndarray | None = None,
                global_index: np.ndarray | None = None, plan: FSAIPlan | None = None) -> np.ndarray:
    """FSAI factor values aligned with ``s.data`` (rows outside ``rows`` left 0).

    ``a`` is the (scaled) SPD matrix, ``s`` the lower pattern including the
    diagonal as the last entry of every row; A[J, J] is read from A's lower
    triangle and mirrored (A is symmetric: the symmetry check sees to that).
    ``plan``: an :class:`FSAIPlan` of this structure (and ``rows``), else one is made.
    """
    plan = FSAIPlan(a, s, rows) if plan is None else plan
    g = np.zeros(s.nnz)
    diag = a.diagonal()
    sp_a = a.scipy() if plan.a_positions is None else None
    for b, (k, rows_k) in enumerate(plan.batches):
        below, above = np.tril_indices(k, -1)
        pos = _positions(s, rows_k, k)
        cols = s.indices[pos]  # increasing along each row: the pairs below the diagonal are A's lower entries
        lower = plan.lower_values(a, b) if sp_a is None else _sample(sp_a, cols[:, below], cols[:, above])
        sub = np.empty((len(rows_k), k, k))
        flat = sub.reshape(len(rows_k), k * k)  # (a view)
        flat[:, below * k + above] = lower
        flat[:, above * k + below] = lower
        flat[:, np.arange(k) * (k + 1)] = diag[cols]
        rhs = np.zeros((len(rows_k), k, 1))
        rhs[:, -1] = 1.0
        try:
            y = np.linalg.solve(sub, rhs)[:, :, 0]
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


def normalised_on_plan(a: CSR, s: CSR, g: np.ndarray, plan: FSAIPlan) -> np.ndarray:
    """``g`` (values on S) with each of the plan's rows scaled so that (G A Gᵀ)_ii = g_Jᵀ A[J, J] g_J = 1,
    read through the plan's positions of A[J, J]'s lower entries (other rows unchanged).  Raises
    :class:`OperatorError` when some (G A Gᵀ)_ii <= 0 (the operator is not SPD)."""
    if plan.a_positions is None:
        raise ValueError("normalised_on_plan needs an FSAIPlan that keeps A's positions")
    out = np.array(g, dtype=np.float64)
    diag = a.diagonal()
    for b, (k, rows_k) in enumerate(plan.batches):
        below, above = np.tril_indices(k, -1)
        pos = _positions(s, rows_k, k)
        gk = out[pos]
        q = np.einsum("ij,ij,ij->i", gk, gk, diag[s.indices[pos]])
        if len(below):
            q += 2.0 * np.einsum("ij,ij,ij->i", gk[:, below], gk[:, above], plan.lower_values(a, b))
        if not np.all(q > 0):
            raise OperatorError("a factor row has (G Â Gᵀ)_ii <= 0; the operator is not SPD")
        out[pos] = gk / np.sqrt(q)[:, None]
    return out


def kaporin_score(g: np.ndarray, s: CSR) -> float:
    """-(2/n) Σ log G_ii of a row-normalised factor (diag(G A Gᵀ) = 1).

    Equals (1/n) log K(G A Gᵀ) + (1/n) log det A: the Kaporin number up to a
    constant that does not depend on G.  Lower is better; FSAI is the minimum.
    """
    return kaporin_of_diagonal(g[s.indptr[1:] - 1])


def kaporin_of_diagonal(diag: np.ndarray) -> float:
    """:func:`kaporin_score` from the diagonal of a row-normalised factor: -(2/n) Σ log G_ii."""
    return float(-2.0 * np.mean(np.log(diag)))
