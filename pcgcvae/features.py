"""The numeric input of the GCVAE, with NumPy only: node, edge and pattern features of
the scaled operator Â and the factor pattern S.

Nodes are dofs; message edges are the off-diagonal nonzeros of pattern(Â) ∪ S ∪ Sᵀ
(source j -> target i, sorted by target then source); every entry of S carries its
own features.  Every feature is a cheap, local, scale-free quantity, so one model
serves any mesh size and any scaling of the operator.

:func:`graph_topology` holds what depends only on the nonzero structures of Â and S (the edges,
where their values lie in Â, the node features that count entries); :func:`build_arrays` adds
the values.  The preconditioner keeps the topology between setups with new values on the same
structure.  :func:`build_arrays` is what both the torch model (through
:func:`pcgcvae.training.graph.build_graph`, which computes the whole feature arrays) and the
torch-free inference of :mod:`pcgcvae.inference` read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .csr import CSR

NODE_FEATURES = 9
EDGE_FEATURES = 6
PATTERN_FEATURES = 5
TARGET_NODE_FEATURES = 1
TARGET_EDGE_FEATURES = 1
FSAI_INPUT_FEATURES = 1  # per node and per entry of S, for decoders that read FSAI's values (GCVAEConfig.fsai_inputs)


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
    topology: GraphTopology | None = None  # what the arrays were built on (its cache serves inference)

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


def _columns(n: int, columns: Sequence[np.ndarray | float | Callable[[], np.ndarray | float]]) -> np.ndarray:
    """A float32 (n, len(columns)) array filled column by column (no float64 copy of the whole)."""
    out = np.empty((n, len(columns)), dtype=np.float32)
    for k, col in enumerate(columns):
        out[:, k] = col() if callable(col) else col
    return out


@dataclass
class GraphTopology:
    """What the GCVAE's input takes from the nonzero structures of Â and S alone (for one block size):
    the message ``edge_index`` and, per edge, the position of its entry in Â's values (``edge_a_pos``,
    -1 where only S or Sᵀ has it) and of its lower entry in S's (``edge_s_pos``, -1 where S has none;
    filled by the first :func:`build_arrays` that reads Â² on S);
    ``s_index`` and ``s_diag``; the position in Â's values of every entry of S (``s_a_pos``, -1 where Â
    stores none) and of every diagonal entry (``a_diag_pos``, -1 where none is stored); and the node
    features that count entries (:data:`NODE_FEATURES` columns 2-8).  ``plans`` is a cache for what
    inference derives from the edges (:mod:`pcgcvae.inference`)."""

    n: int
    block_size: int
    edge_index: np.ndarray
    edge_a_pos: np.ndarray
    edge_s_pos: np.ndarray | None
    s_index: np.ndarray
    s_diag: np.ndarray
    s_a_pos: np.ndarray
    a_diag_pos: np.ndarray
    counts: np.ndarray
    plans: dict = field(default_factory=dict)


def graph_topology(a: CSR, s: CSR, block_size: int = 1) -> GraphTopology:
    """The structure-only part of :func:`build_arrays` for Â's and S's nonzero structures."""
    n = a.n
    rs = s.rows(index_dtype(n))
    s_off = rs != s.indices
    rows_a = a.rows(index_dtype(n))
    off = rows_a != a.indices
    deg = np.bincount(rows_a[off], minlength=n)
    del rows_a, off
    comp = np.zeros((n, 3))
    if block_size > 1:
        comp[np.arange(n), np.arange(n) % block_size] = 1.0
    counts = _columns(n, [
        lambda: np.bincount(rs[s_off], minlength=n) / 8.0,
        lambda: np.bincount(s.indices[s_off], minlength=n) / 8.0,
        deg / 8.0,
        deg == 0,  # Dirichlet/identity row
        comp[:, 0], comp[:, 1], comp[:, 2],
    ])
    edges, edge_a_pos = _union_offdiag_edges(a, s)
    s_index = np.empty((2, s.nnz), dtype=index_dtype(n))
    s_index[0], s_index[1] = rs, s.indices
    diag = np.arange(n)
    return GraphTopology(
        n=n, block_size=block_size, edge_index=edges, edge_a_pos=edge_a_pos, edge_s_pos=None,
        s_index=s_index, s_diag=~s_off,
        s_a_pos=a.positions(rs, s.indices), a_diag_pos=a.positions(diag, diag), counts=counts)


def _union_offdiag_edges(a: CSR, s: CSR) -> tuple[np.ndarray, np.ndarray]:
    """Message edges (2, E) = (source j, target i) over the off-diagonal entries of
    pattern(A) ∪ S ∪ Sᵀ in sorted (i, j) order, and the position of each in A's values (-1: not in A)."""
    if a.contains(s):  # S ⊆ pattern(A) (level 1, symmetric A): the edges are A's off-diagonal entries
        edges, off = _offdiag_edges(a)
        return edges, np.flatnonzero(off).astype(np.int32 if a.nnz < 2**31 - 1 else np.int64)
    ones = np.ones(max(a.nnz, s.nnz))  # pattern sums: every entry >= 1, so none cancels
    sp_s = s.scipy(ones[: s.nnz])
    union = (a.scipy(ones[: a.nnz]) + sp_s + sp_s.T).tocsr()  # scipy's sum (C)
    del ones, sp_s
    union.sort_indices()  # (canonical already: a no-op)
    edges, _ = _offdiag_edges(CSR(union.indptr, union.indices, union.data))
    return edges, a.positions(edges[1], edges[0])


def _gather(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """values[positions], 0 where a position is -1."""
    out = values[np.maximum(positions, 0)]
    out[positions < 0] = 0.0
    return out


def build_arrays(a: CSR, s: CSR, a2_on_s: np.ndarray | None = None, block_size: int = 1,
                 topology: GraphTopology | None = None) -> GraphArrays:
    """The features of the scaled operator ``a`` (unit diagonal) and the lower pattern ``s``
    (diagonal last in each row).

    ``a2_on_s``: values of Â² on S (a feature on entries of S that are not in A, level >= 2).
    ``topology``: :func:`graph_topology` of these structures (and block size), kept from an earlier
    setup; computed here when None.  Features are written straight into float32 arrays, one column
    at a time, to keep the peak memory of large graphs low.
    """
    n = a.n
    if topology is None:
        topology = graph_topology(a, s, block_size)
    if topology.n != n or topology.block_size != block_size or len(topology.s_diag) != s.nnz:
        raise ValueError("build_arrays: the topology was built for other structures or another block size")
    ones = np.ones(n)
    off_mass = np.abs(a.data)
    off_mass[topology.a_diag_pos[topology.a_diag_pos >= 0]] = 0.0
    x = np.empty((n, NODE_FEATURES), dtype=np.float32)
    x[:, 0] = a.scipy() @ ones  # row sum of Â (scipy's row loop: the entries summed in order)
    x[:, 1] = a.scipy(off_mass) @ ones  # off-diagonal mass
    x[:, 2:] = topology.counts
    del off_mass

    edge_value = _gather(a.data, topology.edge_a_pos).astype(np.float32)
    edge_a2 = None
    if a2_on_s is not None:
        if topology.edge_s_pos is None:
            sj, ti = topology.edge_index
            topology.edge_s_pos = s.positions(np.maximum(ti, sj), np.minimum(ti, sj))
        edge_a2 = (_gather(a2_on_s, topology.edge_s_pos) * (edge_value == 0)).astype(np.float32)

    s_aval = _gather(a.data, topology.s_a_pos)
    s_a2 = None if a2_on_s is None else (a2_on_s * (s_aval == 0)).astype(np.float32)
    return GraphArrays(x=x, edge_index=topology.edge_index, edge_value=edge_value, edge_a2=edge_a2,
                       s_index=topology.s_index, s_value=s_aval.astype(np.float32), s_a2=s_a2,
                       s_diag=topology.s_diag, topology=topology)
