"""Local orderings of the operator before its factor pattern is taken.

The lower-triangular pattern tril(Â) -- and so the quality of any factored
approximate inverse on it -- depends on the order of the unknowns (Benzi and
Tůma, "Orderings for factorized sparse approximate inverse preconditioners",
SISC 21, 2000).  On the Poisson problems here, PETSc's nested-dissection
ordering of the local block lowers the CG iterations of FSAI on tril(Â) by
6-10 % against the order Firedrake numbers the dofs in.

The orderings are PETSc's ``MatGetOrdering`` types, computed on the graph of
the local block; for block size ``bs`` > 1 on the graph of its nodes, so the
components of a node stay together (the block structure the GCVAE reads).
M = Gᵀ G does not depend on how the unknowns are labelled, so a factor built
on the permuted block is mapped back by relabelling its rows and columns.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .csr import CSR
from .errors import OptionError

#: ``natural`` keeps the given order; the others are PETSc MatOrderingType names.
ORDERINGS = ("natural", "nd", "rcm", "qmd", "1wd")
DEFAULT_ORDERING = "nd"
#: what a dataset index or checkpoint from before orderings existed was built in
UNRECORDED_ORDERING = "natural"


def recorded_ordering(record: dict) -> str:
    """The ``ordering`` of a dataset index or checkpoint metadata (``natural`` if it predates orderings)."""
    return record.get("ordering", UNRECORDED_ORDERING)


def check_ordering(ordering: str, option: str = "ordering") -> None:
    """Raise :class:`OptionError` unless ``ordering`` is one of :data:`ORDERINGS`."""
    if ordering not in ORDERINGS:
        raise OptionError(f"{option} must be one of {', '.join(ORDERINGS)}; got '{ordering}'")


def node_graph(a: CSR, block_size: int) -> CSR:
    """The graph of the ``block_size`` x ``block_size`` node blocks of ``a`` (its structure: the
    orderings read no values; ``a`` itself for block size 1)."""
    if block_size == 1:
        return a
    if a.n % block_size:
        raise OptionError(f"a local block of {a.n} rows is not a whole number of {block_size}-blocks")
    nodes = a.n // block_size
    # a node's rows are consecutive, so their entries are too: one row per node, with every entry's column
    # node; scipy (C) sorts each row and merges the repeats (np.unique over all nnz keys cost 0.36 s of a 2.2 s
    # FSAI setup on 3D elasticity at 10^5 dofs)
    node_indptr = a.indptr[::block_size].copy()  # (sum_duplicates rewrites indptr in place: not a view of a's)
    graph = sp.csr_matrix((np.ones(a.nnz), a.indices // block_size, node_indptr), shape=(nodes, nodes))
    graph.sum_duplicates()
    return CSR(graph.indptr, graph.indices, np.ones(graph.nnz))


def local_permutation(a: CSR, ordering: str, block_size: int = 1) -> np.ndarray | None:
    """``perm`` with row ``i`` of the reordered block = row ``perm[i]`` of ``a``; None for natural."""
    check_ordering(ordering)
    if ordering == "natural" or a.n == 0:
        return None
    from .petsc_csr import csr_to_mat  # PETSc only here: the constants above serve PETSc-free training code

    graph = csr_to_mat(node_graph(a, block_size))
    try:
        rperm, cperm = graph.getOrdering(ordering)
        nodes = rperm.getIndices().astype(np.int64)
        rperm.destroy()
        cperm.destroy()
    finally:
        graph.destroy()
    if block_size == 1:
        return nodes
    return (nodes[:, None] * block_size + np.arange(block_size)[None, :]).ravel()


def permute(a: CSR, perm: np.ndarray | None) -> CSR:
    """``a[perm][:, perm]`` (:func:`permuted_structure`, then its values gathered); ``a`` itself when
    ``perm`` is None."""
    if perm is None:
        return a
    indptr, indices, source = permuted_structure(a, perm)
    return CSR(indptr, indices, a.data[source])


def permuted_structure(a: CSR, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The structure of ``a[perm][:, perm]`` -- indptr and column indices, relabelled and sorted in
    every row by scipy.sparse -- and, for each of its entries, the entry's position in ``a`` (so a
    matrix of a's structure with other values is permuted by one gather)."""
    n = a.n
    indptr, source = a.row_positions(perm)
    relabel = inverse(perm).astype(a.indices.dtype, copy=False)  # the index type throughout: no int64 copies
    rows = sp.csr_matrix((source, relabel[a.indices[source]], indptr), shape=(n, n))
    rows.has_sorted_indices = False
    rows.sort_indices()  # in place: the positions travel with their columns
    return rows.indptr, rows.indices, rows.data


def inverse(perm: np.ndarray) -> np.ndarray:
    """The inverse permutation."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=perm.dtype)
    return inv
