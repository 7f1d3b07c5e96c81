"""The matrix graph the GCVAE reads: nodes are dofs, edges are the nonzeros
of the scaled operator Â plus the (symmetrised) factor pattern S.

Every feature is a cheap, local, scale-free quantity, so one model serves any
mesh size and any scaling of the operator.  The graph is a
``torch_geometric.data.Data`` subclass so that many of them batch together.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from .csr import CSR

NODE_FEATURES = 9
EDGE_FEATURES = 6
PATTERN_FEATURES = 5
TARGET_NODE_FEATURES = 1
TARGET_EDGE_FEATURES = 1


class FactorGraph(Data):
    """A matrix graph with the factor pattern S attached.

    Attributes: ``x`` node features, ``edge_index``/``edge_attr`` message
    edges (source j -> target i), ``s_index`` (row, col) of every entry of S
    in CSR order, ``s_attr`` its features, ``s_diag`` whether it is diagonal;
    optionally ``target`` (FSAI values on S) and the triplets
    ``t_row, t_a, t_b, t_val`` used to normalise rows during training.
    """

    def __inc__(self, key, value, *args, **kwargs) -> int:  # noqa: ANN001, ANN003, ANN002
        if key in ("s_index", "t_row"):
            return self.num_nodes
        if key in ("t_a", "t_b"):
            return self.s_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key, value, *args, **kwargs) -> int:  # noqa: ANN001, ANN003, ANN002
        if key == "s_index":
            return 1
        return super().__cat_dim__(key, value, *args, **kwargs)


def _union_offdiag_edges(a: CSR, s: CSR) -> tuple[np.ndarray, np.ndarray]:
    """Message edges (2, E) = (source j, target i) over the off-diagonal entries of
    pattern(A) ∪ S ∪ Sᵀ in sorted (i, j) order, and Â's value on each (0 if absent)."""
    n = a.n
    akeys = a.keys()
    skeys = s.keys()
    if len(np.setdiff1d(skeys, akeys, assume_unique=True)) == 0:
        off = a.rows() != a.indices  # S ⊆ pattern(A) (level 1, symmetric A): the edges are A's
        keys = akeys[off]
        aval = a.data[off]
    else:
        rs, cs = s.rows(), s.indices
        keys = np.sort(np.concatenate([akeys, skeys, cs * n + rs]))  # (np.unique hashes: slower here)
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        keys = keys[(keys // n) != (keys % n)]
        aval = None
    edges = np.empty((2, len(keys)), dtype=np.int64)
    np.remainder(keys, n, out=edges[0])
    np.floor_divide(keys, n, out=edges[1])
    del keys
    if aval is None:
        aval = a.lookup(edges[1], edges[0])
    return edges, aval


def _columns(n: int, columns: list) -> torch.Tensor:
    """A float32 (n, len(columns)) tensor filled column by column (no float64 copy of the whole)."""
    out = torch.empty((n, len(columns)), dtype=torch.float32)
    view = out.numpy()
    for k, col in enumerate(columns):
        view[:, k] = col() if callable(col) else col
    return out


def build_graph(
    a: CSR,
    s: CSR,
    a2_on_s: np.ndarray | None = None,
    block_size: int = 1,
    target: np.ndarray | None = None,
    triplets: bool = False,
) -> FactorGraph:
    """Build the graph of the scaled operator ``a`` (unit diagonal) and the
    lower pattern ``s`` (diagonal last in each row).

    ``a2_on_s``: values of Â² on S (used as a feature on entries of S that
    are not in A); ``target``: training target on S; ``triplets``: attach the
    index triplets needed by :func:`pcgcvae.quality.normalise_rows`.
    Features are written straight into float32 tensors, one column at a time,
    to keep the peak memory of large graphs low.
    """
    n = a.n
    rows_a = a.rows()
    off = rows_a != a.indices
    deg = np.bincount(rows_a[off], minlength=n)
    rs = s.rows()
    s_off = rs != s.indices
    comp = np.zeros((n, 3))
    if block_size > 1:
        comp[np.arange(n), np.arange(n) % block_size] = 1.0
    x = _columns(n, [
        lambda: np.bincount(rows_a, weights=a.data, minlength=n),  # row sum of Â
        lambda: np.bincount(rows_a, weights=np.abs(a.data) * off, minlength=n),  # off-diagonal mass
        lambda: np.bincount(rs[s_off], minlength=n) / 8.0,
        lambda: np.bincount(s.indices[s_off], minlength=n) / 8.0,
        deg / 8.0,
        deg == 0,  # Dirichlet/identity row
        comp[:, 0], comp[:, 1], comp[:, 2],
    ])

    edges, aval = _union_offdiag_edges(a, s)
    sj, ti = edges
    in_a = aval != 0

    def a2_column() -> np.ndarray:
        if a2_on_s is None:
            return 0.0
        lo, hi = np.minimum(ti, sj), np.maximum(ti, sj)
        return s.with_data(a2_on_s).lookup(hi, lo) * (~in_a)

    edge_attr = _columns(len(aval), [aval, lambda: np.abs(aval), in_a, lambda: sj < ti, lambda: sj > ti, a2_column])

    s_aval = a.lookup(rs, s.indices)
    s_diag = ~s_off
    s_attr = _columns(s.nnz, [
        s_aval * s_off, lambda: np.abs(s_aval) * s_off, s_aval != 0,
        0.0 if a2_on_s is None else a2_on_s * (s_aval == 0), s_diag,
    ])
    s_index = np.empty((2, s.nnz), dtype=np.int64)
    s_index[0], s_index[1] = rs, s.indices

    g = FactorGraph(
        x=x,
        edge_index=torch.from_numpy(edges),
        edge_attr=edge_attr,
        s_index=torch.from_numpy(s_index),
        s_attr=s_attr,
        s_diag=torch.from_numpy(s_diag),
        num_nodes=n,
    )
    if target is not None:
        g.target = torch.from_numpy(np.asarray(target)).float()
    if triplets:
        t_row, t_a, t_b, t_val = row_triplets(a, s)
        g.t_row = torch.from_numpy(t_row)
        g.t_a = torch.from_numpy(t_a)
        g.t_b = torch.from_numpy(t_b)
        g.t_val = torch.from_numpy(t_val).float()
    return g


def row_triplets(a: CSR, s: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index triplets (i, p, q, Â[col p, col q]) over pairs p, q of entries of
    row i of S with a nonzero Â value, so that
    ``(G Â Gᵀ)_ii = Σ g[p] Â g[q]`` is one gather and one scatter-add.
    """
    lengths = np.diff(s.indptr)
    out_r, out_p, out_q, out_v = [], [], [], []
    for k in np.unique(lengths):
        rows_k = np.flatnonzero(lengths == k)
        ar = np.arange(k)
        pos = s.indptr[rows_k][:, None] + ar[None, :]
        p = np.broadcast_to(pos[:, :, None], (len(rows_k), k, k)).reshape(-1)
        q = np.broadcast_to(pos[:, None, :], (len(rows_k), k, k)).reshape(-1)
        val = a.lookup(s.indices[p], s.indices[q])
        keep = val != 0
        out_r.append(np.repeat(rows_k, k * k)[keep])
        out_p.append(p[keep])
        out_q.append(q[keep])
        out_v.append(val[keep])
    return (
        np.concatenate(out_r),
        np.concatenate(out_p),
        np.concatenate(out_q),
        np.concatenate(out_v),
    )
