"""How much of the per-matrix optimum's gain over FSAI a rule on local features can express (a diagnostic for
issue 23, not the product).

The ceiling (``python -m pcgcvae.training.ceiling ... --save-factors DIR``) stores a held-out problem's local
operator with FSAI's values and the optimised ones on the same pattern.  Row-normalised as the preconditioner
normalises every factor (diag(G Â Gᵀ) = 1), a factor is fixed by its off-diagonal ratios G_ij / G_ii; the
script first counts each saved factor raw and normalised, and FSAI's ratios with the optimum's row scales, then
regresses the optimum's change of those ratios over FSAI's, d_ij, on per-entry features by least squares
and counts CG's iterations (the ceiling's harness) with FSAI's ratios plus the fitted change:

- ``local``: what the network reads within one hop: the entry's pattern features, both nodes' features
  (:func:`pcgcvae.features.build_arrays`) and FSAI's ratio itself, linear and with all products of two
  (``local2``);
- ``+2hop``: ``local2`` and the neighbours' mean node features at both ends (what a second message-passing
  layer sees);
- ``+boundary``, ``+mode``: ``local2`` and one global quantity per node, the hop distance to the nearest node
  with a nonzero row sum of A (a boundary's neighbour), or the amplitude of Â's lowest eigenvector, to see
  whether the optimum depends on where a node sits in the domain.

A fit at one size is applied unchanged to the other sizes' problems (``--transfer``: the held-out generator's
problems, FSAI's ratios plus the predicted change): whether a rule learned on one matrix carries to larger ones;
``--suite`` applies it to foreign-suite problems (scalar, Dirichlet) on the suite's random right-hand side.
A count of null: CG did not converge in 5x FSAI's iterations with the rule's factor.

    python -m pcgcvae.training.ceiling --family poisson --sizes 48 --steps 300 --lr 3e-3 --objective cg \\
        --cg-fraction 0.75 --probes 32 --model poisson --save-factors factors --out p48.json
    python scripts/ceiling_locality.py factors/poisson-2d-48-l1.npz --transfer 96 192 384
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BOUNDARY_CAP = 8  # hops: distances beyond this are one class


def row_ratios(s, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """G_ij / G_ii on every entry of the lower pattern ``s`` (diagonal last in each row) and the mask of
    off-diagonal entries."""
    rows = s.rows()
    return g / g[s.indptr[1:] - 1][rows], s.indices != rows


def boundary_distance(a) -> np.ndarray:  # noqa: ANN001
    """Hops from each node to the nearest node whose row of A (unscaled) does not sum to zero (relative to its
    diagonal: a Dirichlet boundary's neighbour or a reaction term), capped."""
    from scipy.sparse.csgraph import dijkstra

    m = a.scipy()
    sources = np.flatnonzero(np.abs(m @ np.ones(a.n)) > 1e-8 * np.abs(m.diagonal()))
    if len(sources) == 0:
        return np.full(a.n, float(BOUNDARY_CAP))
    m = m.copy()
    m.data = np.ones_like(m.data)
    d = dijkstra(m, unweighted=True, indices=sources, min_only=True)
    return np.minimum(d, BOUNDARY_CAP)


def lowest_mode(ahat) -> np.ndarray:  # noqa: ANN001
    """|v| / max |v| for the eigenvector of Â's smallest eigenvalue (shift-invert Lanczos)."""
    from scipy.sparse.linalg import eigsh

    _, v = eigsh(ahat.scipy().tocsc(), k=1, sigma=0.0, which="LM")
    v = np.abs(v[:, 0])
    return v / v.max()


def a2_on_pattern(op) -> np.ndarray:  # noqa: ANN001
    """Â² on the entries of the pattern (the network's input at level 2)."""
    m = op.ahat.scipy()
    return np.asarray((m @ m)[op.s.rows(), op.s.indices]).ravel()


def features(op, fsai_ratio: np.ndarray, kind: str, level: int, block_size: int = 1) -> np.ndarray:  # noqa: ANN001
    """Per-entry features of the pattern (every entry; the fit uses the off-diagonal ones) of ``level``."""
    from pcgcvae.features import build_arrays

    arrays = build_arrays(op.ahat, op.s, a2_on_s=a2_on_pattern(op) if level > 1 else None,
                          block_size=block_size)
    i, j = arrays.s_index[0].astype(np.int64), arrays.s_index[1].astype(np.int64)
    base = np.column_stack([arrays.s_attr[:, :4], arrays.x[i], arrays.x[j], fsai_ratio]).astype(np.float64)
    cols = [np.ones(len(i)), *base.T]
    if kind != "local":
        cols += [base[:, a] * base[:, b] for a in range(base.shape[1]) for b in range(a, base.shape[1])]
    if kind == "+boundary":
        d = boundary_distance(op.a)
        onehot = [(d[i] == h).astype(float) for h in range(BOUNDARY_CAP + 1)]
        cols += onehot + [o * fsai_ratio for o in onehot]
    if kind == "+2hop":
        m = abs(op.ahat.scipy())
        m.setdiag(0)
        mean = (m @ arrays.x.astype(np.float64)) / np.maximum(m @ np.ones(op.ahat.n), 1e-30)[:, None]
        cols += [*mean[i].T, *mean[j].T]
    if kind == "+mode":
        v = lowest_mode(op.ahat)
        cols += [v[i], v[i] ** 2, v[i] * fsai_ratio, v[i] ** 2 * fsai_ratio]
    return np.column_stack(cols)


def factor_from_ratios(op, ratio: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Row-normalised values of Ĝ with these off-diagonal ratios (diag(G Â Gᵀ) = 1)."""
    from pcgcvae.csr import normalise_rows

    return normalise_rows(op.s.with_data(ratio.astype(np.float64)), op.ahat)


def count(op, g: np.ndarray, limit: int, rhs: np.ndarray | None = None) -> int | None:  # noqa: ANN001
    """CG's iterations with the factor ``g`` (:func:`pcgcvae.training.ceiling.cg_iterations`), None where they
    exceed ``limit`` (a rule applied far from its data can make the factor useless)."""
    from pcgcvae.training import ceiling

    try:
        return ceiling.cg_iterations(op, g, rhs=rhs, max_it=limit)
    except RuntimeError:
        return None


def apply_fits(op, fits: dict[str, np.ndarray], level: int, block_size: int,  # noqa: ANN001
               rhs: np.ndarray | None = None) -> dict:
    """FSAI's count and each fitted rule's (FSAI's ratios plus the rule's change) on another operator."""
    from pcgcvae.fsai import fsai_values
    from pcgcvae.training import ceiling

    fsai = fsai_values(op.ahat, op.s)
    fr, off = row_ratios(op.s, fsai)
    row = {"n": op.a.n, "iterations_fsai": ceiling.cg_iterations(op, fsai, rhs=rhs)}
    for kind, coef in fits.items():
        ratio = fr.copy()
        ratio[off] += features(op, fr, kind, level, block_size)[off] @ coef
        row[kind] = count(op, factor_from_ratios(op, ratio), 5 * row["iterations_fsai"], rhs)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("factors", type=Path, help="a --save-factors file of python -m pcgcvae.training.ceiling")
    ap.add_argument("--kinds", nargs="+", default=["local", "local2", "+2hop", "+boundary", "+mode"])
    ap.add_argument("--transfer", type=int, nargs="*", default=[], help="other held-out sizes to apply the fits to")
    ap.add_argument("--family", choices=["poisson", "elasticity"], default="poisson")
    ap.add_argument("--block-size", type=int, default=1, help="the operator's (2 or 3 for elasticity)")
    ap.add_argument("--dim", type=int, default=2, choices=[2, 3], help="--transfer: the held-out problems' dimension")
    ap.add_argument("--level", type=int, default=1, choices=[1, 2], help="the saved factors' pattern level")
    ap.add_argument("--suite", nargs="*", default=[],
                    help="foreign-suite problems (scalar, Dirichlet) to apply the fits to, on the suite's random "
                         "right-hand side")
    ap.add_argument("--ridge", type=float, default=1e-8, help="Tikhonov weight relative to the features' scale")
    args = ap.parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
    import firedrake as fd

    from pcgcvae.petsc_csr import mat_to_csr
    from pcgcvae.problems import build_problem
    from pcgcvae.training import ceiling
    from pcgcvae.training.heldout import heldout_spec

    op, values = ceiling.load_factors_npz(args.factors)
    fsai_ratio, off = row_ratios(op.s, values["fsai"])
    opt_ratio, _ = row_ratios(op.s, values["optimised"])
    target = (opt_ratio - fsai_ratio)[off]
    it = {"fsai": ceiling.cg_iterations(op, values["fsai"])}
    normalised = {}
    for name in values:
        if name != "fsai":
            it[name] = ceiling.cg_iterations(op, values[name])
            normalised[name] = factor_from_ratios(op, row_ratios(op.s, values[name])[0])
            it[f"{name} normalised"] = ceiling.cg_iterations(op, normalised[name])
    # the optimum's row scales (its G_ii over the normalised factor's) on FSAI's ratios: do they help alone?
    diag = op.s.indptr[1:] - 1
    scales = (values["optimised"][diag] / normalised["optimised"][diag])[op.s.rows()]
    it["fsai ratios, optimised scales"] = ceiling.cg_iterations(op, values["fsai"] * scales)
    print(json.dumps({"problem": str(args.factors), "n": op.a.n, "iterations": it}), flush=True)

    fits = {}
    for kind in args.kinds:
        x = features(op, fsai_ratio, kind, args.level, args.block_size)[off]
        scale = np.maximum(np.abs(x).max(axis=0), 1e-30)
        xs = x / scale
        coef = np.linalg.solve(xs.T @ xs + args.ridge * len(xs) * np.eye(xs.shape[1]), xs.T @ target) / scale
        fitted = x @ coef
        r2 = 1.0 - np.sum((target - fitted) ** 2) / np.sum((target - target.mean()) ** 2)
        fits[kind] = coef
        row = {"kind": kind, "features": x.shape[1], "r2": round(float(r2), 4)}
        for alpha in (0.5, 1.0, 1.5):
            ratio = fsai_ratio.copy()
            ratio[off] += alpha * fitted
            row[f"iterations x{alpha}"] = ceiling.cg_iterations(op, factor_from_ratios(op, ratio))
        print(json.dumps(row), flush=True)

    for size in args.transfer:
        P = build_problem(heldout_spec(args.family, size, args.dim, 1000), comm=fd.COMM_SELF).assemble_matrix()
        other = ceiling.local_operator(mat_to_csr(P), "nd", args.block_size, args.level)
        P.destroy()
        print(json.dumps({"transfer": size, **apply_fits(other, fits, args.level, args.block_size)}), flush=True)

    from pcgcvae import foreign

    cases = {c.name: c for c in foreign.all_cases()}
    for name in args.suite:
        built = cases[name].build(False)
        if built.nullspace is not None or built.split is not None:
            raise SystemExit(f"{name}: only problems without a null space or split are supported")
        b = foreign._random_rhs(built, name)
        rhs = b.getArray().copy()
        b.destroy()
        other = ceiling.local_operator(mat_to_csr(built.pc_matrix), "nd", args.block_size, args.level)
        print(json.dumps({"suite": name, **apply_fits(other, fits, args.level, args.block_size, rhs)}), flush=True)


if __name__ == "__main__":
    main()
