"""Quality of a factor G on a pattern S (torch, differentiable).

With rows normalised so that diag(G Â Gᵀ) = 1, the Kaporin number reduces to
``-(2/n) Σ log G_ii`` plus a constant of A; classical FSAI is its minimiser.
The paper's Frobenius SPAI objective ||I - M Â||_F is estimated with probe
vectors.
"""

from __future__ import annotations

import itertools

import torch


def row_quadratic(g: torch.Tensor, t_row: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor,
                  t_val: torch.Tensor, n: int) -> torch.Tensor:
    """(G Â Gᵀ)_ii for every row i, from the triplets of :func:`graph.row_triplets`."""
    contrib = g[t_a] * t_val * g[t_b]
    return torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(0, t_row, contrib)


def normalise_rows(g: torch.Tensor, data) -> torch.Tensor:  # noqa: ANN001
    """Scale each row of G so that (G Â Gᵀ)_ii = 1."""
    q = row_quadratic(g, data.t_row, data.t_a, data.t_b, data.t_val, data.num_nodes)
    return g / torch.sqrt(q.clamp_min(1e-30))[data.s_index[0]]


def kaporin_per_graph(g_normalised: torch.Tensor, data) -> torch.Tensor:  # noqa: ANN001
    """-(2/n) Σ log G_ii per graph of a batch (normalised factor)."""
    diag = g_normalised[data.s_diag]
    rows = data.s_index[0][data.s_diag]
    batch = data.batch[rows] if getattr(data, "batch", None) is not None else torch.zeros_like(rows)
    ngraph = int(batch.max()) + 1 if len(batch) else 1
    s = torch.zeros(ngraph, dtype=g_normalised.dtype).index_add_(0, batch, torch.log(diag))
    cnt = torch.zeros(ngraph, dtype=g_normalised.dtype).index_add_(0, batch, torch.ones_like(diag))
    return -2.0 * s / cnt


def _spmv(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor,
          n: int) -> torch.Tensor:
    out = torch.zeros((n, *v.shape[1:]), dtype=v.dtype, device=v.device)
    return out.index_add_(0, rows, values.view(-1, *([1] * (v.dim() - 1))) * v[cols])


def frobenius_per_node(g: torch.Tensor, data, a_index: torch.Tensor, a_val: torch.Tensor,  # noqa: ANN001
                       probes: int = 8, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic estimate of ||I - Gᵀ G Â||_F² / n with Rademacher probes."""
    n = data.num_nodes
    v = torch.randint(0, 2, (n, probes), generator=generator).float() * 2 - 1
    av = _spmv(a_val, a_index[0], a_index[1], v, n)
    r, c = data.s_index
    gav = _spmv(g, r, c, av, n)
    mv = _spmv(g, c, r, gav, n)
    return ((v - mv) ** 2).sum() / (n * probes)


def _extremal_log_condition(gv: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, a_rows: torch.Tensor,
                            a_cols: torch.Tensor, a_val: torch.Tensor, n: int) -> torch.Tensor:
    """log λmax - log λmin of G Â Gᵀ for one graph without forming it densely.

    The two eigenvectors come from scipy's sparse eigensolver (Lanczos; shift-invert at 0 for λmin) and are
    held fixed; each eigenvalue is then the differentiable Rayleigh quotient (Gᵀv)ᵀ Â (Gᵀv), whose gradient
    with respect to G equals the eigenvalue's (Hellmann-Feynman, simple eigenvalues).
    """
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    gmat = sp.csr_matrix((host(gv.double()), (host(rows), host(cols))), shape=(n, n))
    amat = sp.csr_matrix((host(a_val.double()), (host(a_rows), host(a_cols))), shape=(n, n))
    amat = amat + sp.identity(n, format="csr")
    b = (gmat @ amat @ gmat.T).tocsc()
    v0 = np.ones(n)
    _, vmax = eigsh(b, k=1, which="LA", v0=v0, tol=1e-6)
    _, vmin = eigsh(b, k=1, sigma=0.0, which="LM", v0=v0, tol=1e-6)
    vecs = torch.from_numpy(np.column_stack([vmax[:, 0], vmin[:, 0]])).to(gv.device)
    w = _spmv(gv.double(), cols, rows, vecs, n)  # Gᵀ v
    lam = (w * w).sum(0) + (a_val.double()[:, None] * w[a_rows] * w[a_cols]).sum(0)  # wᵀ Â w, unit diagonal
    return torch.log(lam[0]) - torch.log(lam[1].clamp_min(1e-12))


def _graph_bounds(data) -> list[int]:  # noqa: ANN001
    ptr = getattr(data, "ptr", None)
    return [0, data.num_nodes] if ptr is None else ptr.tolist()


def condition_graphs(data, max_n: int, mask: torch.Tensor | None = None) -> list[int]:  # noqa: ANN001
    """Which graphs of a batch :func:`log_condition_per_graph` measures, in its order: those with 1 to
    ``max_n`` nodes that ``mask`` (a bool per graph, if given) marks."""
    return [k for k, (lo, hi) in enumerate(itertools.pairwise(_graph_bounds(data)))
            if 0 < hi - lo <= max_n and (mask is None or bool(mask[k]))]


def log_condition_per_graph(g: torch.Tensor, data, max_n: int, mask: torch.Tensor | None = None,  # noqa: ANN001
                            dense_max_n: int = 1200) -> torch.Tensor:
    """log cond(G Â Gᵀ) (differentiable) of every graph of a batch with at most ``max_n`` nodes
    (and, with ``mask``, a bool per graph, only the graphs it marks); the others are skipped.
    Dense eigenvalues up to ``dense_max_n`` nodes, sparse extremal eigenvectors with Rayleigh
    quotients above.  Kaporin is minimised exactly by FSAI, so this is
    the term that lets a trained factor beat FSAI in CG iterations."""
    rows, cols = data.s_index
    ei, ea = data.edge_index, data.edge_attr
    in_a = ea[:, 2] > 0
    out = []
    bounds = list(itertools.pairwise(_graph_bounds(data)))
    for k in condition_graphs(data, max_n, mask):
        lo, hi = bounds[k]
        n = hi - lo
        ms = (rows >= lo) & (rows < hi)
        me = in_a & (ei[1] >= lo) & (ei[1] < hi)
        if n > dense_max_n:
            out.append(_extremal_log_condition(g[ms], rows[ms] - lo, cols[ms] - lo, ei[1][me] - lo, ei[0][me] - lo,
                                               ea[me, 0], n))
            continue
        a = torch.eye(n, dtype=torch.float64, device=g.device)
        a[ei[1][me] - lo, ei[0][me] - lo] = ea[me, 0].double()
        gm = torch.zeros(n, n, dtype=torch.float64, device=g.device)
        gm = gm.index_put((rows[ms] - lo, cols[ms] - lo), g[ms].double())
        ev = torch.linalg.eigvalsh(gm @ a @ gm.T)
        out.append(torch.log(ev[-1]) - torch.log(ev[0].clamp_min(1e-12)))
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def _graph_index(data) -> tuple[torch.Tensor, int]:  # noqa: ANN001
    """Each node's graph in a batch (zeros for a single graph) and the number of graphs."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.num_nodes, dtype=torch.long), 1
    return batch, len(_graph_bounds(data)) - 1


def scaled_operator_triplets(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Rows, columns and values (float64) of the scaled operator Â of a graph or batch: the edges in A
    (edge feature 2) and the unit diagonal."""
    n = data.num_nodes
    ei, ea = data.edge_index, data.edge_attr
    in_a = ea[:, 2] > 0
    diag = torch.arange(n, device=ei.device)
    return (torch.cat([ei[1][in_a], diag]), torch.cat([ei[0][in_a], diag]),
            torch.cat([ea[in_a, 0].double(), torch.ones(n, dtype=torch.float64, device=ei.device)]))


def cg_rate_per_graph(g: torch.Tensor, data, steps: torch.Tensor, xstar: torch.Tensor,  # noqa: ANN001
                      floor: float = 1e-24, checkpoint_every: int = 0,
                      operator: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Each graph's mean log energy-norm error reduction per step, log(‖x_k − x*‖²_Â / ‖x*‖²_Â) / k averaged
    over the columns of ``xstar`` (n, probes), after ``steps[graph]`` = k steps of CG on Â x = Â x*
    preconditioned by M = Gᵀ G from x0 = 0, unrolled and differentiable in ``g`` (float64).  CG lowers the
    energy norm of the error at every step, so the rate is negative for any SPD M and lower is faster: the
    quotient of two factors' rates predicts the quotient of their iteration counts (:mod:`pcgcvae.trial`).
    A column whose error falls below ``floor`` × its start stops there (small graphs converge exactly).
    ``checkpoint_every`` > 0 keeps only every that many steps' CG state for the gradient and recomputes the
    steps between in the backward pass (``torch.utils.checkpoint``): memory falls by about that factor for
    about a third more time.  ``operator``: Â's (rows, columns, float64 values) when at hand in full precision
    (default: :func:`scaled_operator_triplets`, from the graph's float32 edge features)."""
    from torch.utils.checkpoint import checkpoint

    n = data.num_nodes
    batch, ngraph = _graph_index(data)
    a_rows, a_cols, a_val = operator if operator is not None else scaled_operator_triplets(data)
    rows, cols = data.s_index
    gd = g.double()
    probes = xstar.shape[1]

    def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ngraph, probes, dtype=u.dtype, device=u.device).index_add_(0, batch, u * v)

    def amul(v: torch.Tensor) -> torch.Tensor:
        return _spmv(a_val, a_rows, a_cols, v, n)

    xs = xstar.double()
    r = amul(xs)
    e0 = dot(xs, r)  # ‖x*‖²_Â
    steps = steps.to(batch.device)

    def precondition(gv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # Gᵀ (G v)
        return _spmv(gv, cols, rows, _spmv(gv, rows, cols, v, n), n)

    def run(first: int, last: int, gv: torch.Tensor, x: torch.Tensor, r: torch.Tensor, p: torch.Tensor,
            rz: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """CG steps first..last (1-based) from the state (x, r, p, rz); ``final`` gathers each graph's
        error at its own step."""

        for k in range(first, last + 1):
            active = rz > floor * e0  # (rᵀ M r: 0 once a column has converged exactly)
            ap = amul(p)
            pap = dot(p, ap)
            ok = active & (pap > 0)
            alpha = torch.where(ok, rz / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
            x = x + alpha[batch] * p
            r = r - alpha[batch] * ap
            z = precondition(gv, r)
            rz_new = dot(r, z)
            ok = active & (rz > 0)
            beta = torch.where(ok, rz_new / torch.where(ok, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = z + beta[batch] * p
            rz = rz_new
            if bool((steps == k).any()):
                e = x - xs
                final = torch.where((steps == k)[:, None], dot(e, amul(e)), final)
        return x, r, p, rz, final

    z = precondition(gd, r)
    state = (torch.zeros_like(xs), r, z, dot(r, z), e0)
    total = int(steps.max())
    block = checkpoint_every if checkpoint_every > 0 else total
    for first in range(1, total + 1, block):
        last = min(total, first + block - 1)
        if checkpoint_every > 0 and torch.is_grad_enabled():
            state = checkpoint(run, first, last, gd, *state, use_reentrant=False)
        else:
            state = run(first, last, gd, *state)
    final = state[4]
    return (torch.log(torch.clamp(final / e0, min=floor)) / steps.double()[:, None]).mean(1)
