"""The matrix graph the GCVAE reads, as a ``torch_geometric.data.Data`` subclass
so that many of them batch together (training).

The features themselves are computed with NumPy only by
:func:`pcgcvae.features.build_arrays` (nodes are dofs, edges are the nonzeros of the
scaled operator Â plus the symmetrised factor pattern S; see that module);
:func:`build_graph` wraps those arrays into tensors (the node features without a copy).
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from ..csr import CSR
from ..features import (
    EDGE_FEATURES,
    FSAI_INPUT_FEATURES,
    NODE_FEATURES,
    PATTERN_FEATURES,
    TARGET_EDGE_FEATURES,
    TARGET_NODE_FEATURES,
    GraphArrays,
    build_arrays,
)

__all__ = [
    "EDGE_FEATURES",
    "FSAI_INPUT_FEATURES",
    "NODE_FEATURES",
    "PATTERN_FEATURES",
    "TARGET_EDGE_FEATURES",
    "TARGET_NODE_FEATURES",
    "FactorGraph",
    "GraphArrays",
    "build_arrays",
    "build_graph",
    "row_triplets",
]


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
    index triplets needed by :func:`pcgcvae.training.quality.normalise_rows`.
    The node features are :func:`pcgcvae.features.build_arrays`'s float32 array, shared with
    the tensor (no copy); the edge and pattern features are computed whole
    (:attr:`pcgcvae.features.GraphArrays.edge_attr`, ``s_attr``); the index arrays are copied to
    int64, torch_geometric's index type.
    """
    arrays = build_arrays(a, s, a2_on_s=a2_on_s, block_size=block_size)
    g = FactorGraph(
        x=torch.from_numpy(arrays.x),
        edge_index=torch.from_numpy(arrays.edge_index.astype(np.int64)),  # torch_geometric's index type
        edge_attr=torch.from_numpy(arrays.edge_attr),
        s_index=torch.from_numpy(arrays.s_index.astype(np.int64)),
        s_attr=torch.from_numpy(arrays.s_attr),
        s_diag=torch.from_numpy(arrays.s_diag),
        num_nodes=arrays.num_nodes,
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
