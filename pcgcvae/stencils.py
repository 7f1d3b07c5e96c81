"""Finite-difference diffusion stencils on grids of interior unknowns (scipy only, no PETSc).

The matrix of the energy  Σ_edges w_e (u_i − u_j)²  over the grid's edges, Dirichlet values eliminated
on both sides (a coupling to a boundary point only adds w to the diagonal), in natural order (x
fastest, as a DMDA numbers its points).  The foreign suite (:mod:`pcgcvae.foreign`) assembles its 5-,
7- and 27-point problems this way, and the training generator (:mod:`pcgcvae.problems`, mesh kinds
``fd5`` / ``fd7``) its 5- and 7-point ones, from other coefficient fields and seeds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

Offset = tuple[int, ...]


def harmonic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The harmonic mean 2 / (1/a + 1/b): a face's diffusivity between two cells."""
    return 2.0 / (1.0 / a + 1.0 / b)


def coupled_entries(shape: tuple[int, ...],
                    weights: list[tuple[Offset, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO entries (rows, columns, values; duplicates to be summed) of Σ_edges w (u_i − u_j)² on a
    grid of ``shape`` interior unknowns.  ``weights``: for each stencil offset (one of each ± pair), w
    on the grid points where the edge starts (any array broadcasting to ``shape``)."""
    idx = np.arange(int(np.prod(shape))).reshape(shape[::-1]).transpose()  # x fastest (DMDA natural order)
    rows, cols, vals = [], [], []
    diag = np.zeros(shape)
    for off, w in weights:
        w = np.broadcast_to(w, shape)
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        ws = w[src]
        rows += [idx[src].ravel(), idx[dst].ravel()]
        cols += [idx[dst].ravel(), idx[src].ravel()]
        vals += [-ws.ravel(), -ws.ravel()]
        diag += w  # every point pays for its edge in +off ...
        back = np.zeros(shape)
        back[dst] = ws  # ... and in -off (edge from the other side; outside the grid: the boundary)
        outside = np.ones(shape, dtype=bool)
        outside[dst] = False
        back[outside] = w[outside]
        diag += back
    n = idx.size
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag.transpose().ravel())
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def coupled_matrix(shape: tuple[int, ...], weights: list[tuple[Offset, np.ndarray]],
                   reaction: np.ndarray | float = 0.0) -> sp.csr_matrix:
    """:func:`coupled_entries` summed into a CSR matrix with sorted columns, plus ``reaction`` (per
    grid point, or one number) on the diagonal."""
    rows, cols, vals = coupled_entries(shape, weights)
    n = int(np.prod(shape))
    A = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    A.sum_duplicates()
    if np.any(reaction):
        A = A + sp.diags(np.broadcast_to(reaction, shape).transpose().ravel())
    A.sort_indices()
    return A.tocsr()


def face_weights(kappa: np.ndarray, scale: tuple[float, ...] | None = None) -> list[tuple[Offset, np.ndarray]]:
    """The 5-point (2D) or 7-point (3D) weights of a diffusion with cell values ``kappa`` of shape
    (m + 1,) * dim (cell c lies between grid points c - 1 and c along each axis): the face between
    grid points i and i + e_d gets the harmonic mean of the two cells it separates, times ``scale[d]``
    (axis-aligned anisotropy)."""
    dim = kappa.ndim
    scale = scale or (1.0,) * dim
    inner = tuple(slice(None, -1) for _ in range(dim))
    weights = []
    for d in range(dim):
        ahead = tuple(slice(1, None) if k == d else slice(None, -1) for k in range(dim))
        off = tuple(1 if k == d else 0 for k in range(dim))
        weights.append((off, scale[d] * harmonic(kappa[inner], kappa[ahead])))
    return weights
