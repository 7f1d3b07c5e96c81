"""The numeric input of the GCVAE, with NumPy only: node, edge and pattern features of
the scaled operator Â and the factor pattern S.

Nodes are dofs; message edges are the off-diagonal nonzeros of pattern(Â) ∪ S ∪ Sᵀ
(source j -> target i, sorted by target then source); every entry of S carries its
own features.  Every feature is a cheap, local, scale-free quantity, so one model
serves any mesh size and any scaling of the operator.

:func:`build_arrays` is what both the torch model (through
:func:`pcgcvae.training.graph.build_graph`, which computes the whole feature arrays) and the
torch-free inference of :mod:`pcgcvae.inference` read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .csr import CSR

NODE_FEATURES = 9
EDGE_FEATURES = 6
PATTERN_FEATURES = 5
TARGET_NODE_FEATURES = 1
TARGET_EDGE_FEATURES = 1


@dataclass
class GraphArrays:
    """The GCVAE's input for one matrix.

    ``x`` float32 (n, NODE_FEATURES); ``edge_index`` (2, E), rows (source j, target i),
    sorted by target then source; ``edge_value`` float32 (E,): Â's value on each edge (0 where
    only S has it); ``edge_a2`` float32 (E,) or None: Â²'s value on the edges of S outside A
    (level >= 2); the edge features ``edge_attr`` (E, EDGE_FEATURES) are computed from these,
    whole or a block of edges at a time (:meth:`edge_features`), so inference never holds all of
    them; ``s_index``
    (2, nnz(S)), rows (row, column) of every entry of S in CSR order (diagonal last in each
    row); ``s_value`` float32 (nnz(S),): Â's value on each entry of S; ``s_a2`` float32 or None:
    Â² on the entries of S outside A; ``s_diag`` bool (nnz(S),); the pattern features ``s_attr``
    (nnz(S), PATTERN_FEATURES) are computed from these (:meth:`pattern_features`).  The index
    arrays are int32 (int64 beyond 2^31 nodes: :func:`index_dtype`).
    """

    x: np.ndarray
    edge_index: np.ndarray
    edge_value: np.ndarray
    edge_a2: np.ndarray | None
    s_index: np.ndarray
    s_value: np.ndarray
    s_a2: np.ndarray | None
    s_diag: np.ndarray

    def edge_features(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Features of edges [start, stop), float32 (stop - start, EDGE_FEATURES): Â's value, its
        magnitude, whether the edge is in A, whether source < target, source > target, Â² on S
        outside A."""
        sl = slice(start, self.num_edges if stop is None else stop)
        v = self.edge_value[sl]
        sj, ti = self.edge_index[0, sl], self.edge_index[1, sl]
        return _columns(len(v), [v, lambda: np.abs(v), v != 0, lambda: sj < ti, lambda: sj > ti,
                                 0.0 if self.edge_a2 is None else self.edge_a2[sl]])

    @property
    def edge_attr(self) -> np.ndarray:
        """Every edge's features (a new array; :meth:`edge_features`)."""
        return self.edge_features()

    def pattern_features(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Features of the entries [start, stop) of S, float32 (stop - start, PATTERN_FEATURES): Â's
        value and its magnitude off the diagonal, whether the entry is in A, Â² outside A, diagonal."""
        sl = slice(start, len(self.s_value) if stop is None else stop)
        v, diag = self.s_value[sl], self.s_diag[sl]
        return _columns(len(v), [lambda: v * ~diag, lambda: np.abs(v) * ~diag, v != 0,
                                 0.0 if self.s_a2 is None else self.s_a2[sl], diag])

    @property
    def s_attr(self) -> np.ndarray:
        """Every pattern entry's features (a new array; :meth:`pattern_features`)."""
        return self.pattern_features()

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


def index_dtype(n: int) -> type:
    """The integer type of node indices of an n-node graph: int32 while it fits (half the memory)."""
    return np.int32 if n < 2**31 else np.int64


def _offdiag_edges(m: CSR) -> tuple[np.ndarray, np.ndarray]:
    """The off-diagonal entries of ``m`` as message edges (2, E) = (source j, target i), in m's
    (row, column) order, and the mask of those entries among m's."""
    rows = m.rows(index_dtype(m.n))
    off = rows != m.indices
    edges = np.empty((2, int(np.count_nonzero(off))), dtype=rows.dtype)
    edges[0], edges[1] = m.indices[off], rows[off]
    return edges, off


def _union_offdiag_edges(a: CSR, s: CSR) -> tuple[np.ndarray, np.ndarray]:
    """Message edges (2, E) = (source j, target i) over the off-diagonal entries of
    pattern(A) ∪ S ∪ Sᵀ in sorted (i, j) order, and Â's value on each (0 if absent)."""
    if a.contains(s):  # S ⊆ pattern(A) (level 1, symmetric A): the edges are A's off-diagonal entries
        edges, off = _offdiag_edges(a)
        return edges, a.data[off]
    ones = np.ones(max(a.nnz, s.nnz))  # pattern sums: every entry >= 1, so none cancels
    sp_s = s.scipy(ones[: s.nnz])
    union = (a.scipy(ones[: a.nnz]) + sp_s + sp_s.T).tocsr()  # scipy's sum (C)
    del ones, sp_s
    union.sort_indices()  # (canonical already: a no-op)
    edges, _ = _offdiag_edges(CSR(union.indptr, union.indices, union.data))
    del union
    return edges, a.lookup(edges[1], edges[0])


def _columns(n: int, columns: Sequence[np.ndarray | float | Callable[[], np.ndarray | float]]) -> np.ndarray:
    """A float32 (n, len(columns)) array filled column by column (no float64 copy of the whole)."""
    out = np.empty((n, len(columns)), dtype=np.float32)
    for k, col in enumerate(columns):
        out[:, k] = col() if callable(col) else col
    return out


def _node_features(a: CSR, s: CSR, rs: np.ndarray, s_off: np.ndarray, block_size: int) -> np.ndarray:
    """The (n, NODE_FEATURES) float32 node features (``rs``: S's row of each entry; ``s_off``: off-diagonal)."""
    n = a.n
    rows_a = a.rows(index_dtype(n))
    off = rows_a != a.indices
    deg = np.bincount(rows_a[off], minlength=n)
    comp = np.zeros((n, 3))
    if block_size > 1:
        comp[np.arange(n), np.arange(n) % block_size] = 1.0
    return _columns(n, [
        lambda: np.bincount(rows_a, weights=a.data, minlength=n),  # row sum of Â
        lambda: np.bincount(rows_a, weights=np.abs(a.data) * off, minlength=n),  # off-diagonal mass
        lambda: np.bincount(rs[s_off], minlength=n) / 8.0,
        lambda: np.bincount(s.indices[s_off], minlength=n) / 8.0,
        deg / 8.0,
        deg == 0,  # Dirichlet/identity row
        comp[:, 0], comp[:, 1], comp[:, 2],
    ])


def build_arrays(a: CSR, s: CSR, a2_on_s: np.ndarray | None = None, block_size: int = 1) -> GraphArrays:
    """The features of the scaled operator ``a`` (unit diagonal) and the lower pattern ``s``
    (diagonal last in each row).

    ``a2_on_s``: values of Â² on S (a feature on entries of S that are not in A, level >= 2).
    Features are written straight into float32 arrays, one column at a time, to keep the
    peak memory of large graphs low.
    """
    n = a.n
    rs = s.rows(index_dtype(n))
    s_off = rs != s.indices
    x = _node_features(a, s, rs, s_off, block_size)  # (its temporaries die with it)

    edges, aval = _union_offdiag_edges(a, s)
    edge_value = aval.astype(np.float32)
    edge_a2 = None
    if a2_on_s is not None:
        sj, ti = edges
        lo, hi = np.minimum(ti, sj), np.maximum(ti, sj)
        edge_a2 = (s.with_data(a2_on_s).lookup(hi, lo) * (edge_value == 0)).astype(np.float32)
        del lo, hi
    del aval

    s_aval = a.lookup(rs, s.indices)
    s_a2 = None if a2_on_s is None else (a2_on_s * (s_aval == 0)).astype(np.float32)
    s_value = s_aval.astype(np.float32)
    del s_aval
    s_index = np.empty((2, s.nnz), dtype=index_dtype(n))
    s_index[0], s_index[1] = rs, s.indices
    return GraphArrays(x=x, edge_index=edges, edge_value=edge_value, edge_a2=edge_a2, s_index=s_index,
                       s_value=s_value, s_a2=s_a2, s_diag=~s_off)
