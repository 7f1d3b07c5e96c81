"""The headroom a factor has over FSAI on a fixed pattern: per-matrix optimisation of cond(G Â Gᵀ).

    python -m pcgcvae.training.ceiling --family elasticity --sizes 48 --sizes-3d 16 --out ceiling.json

FSAI minimises Kaporin's number on the pattern; CG's iterations follow the condition number.  This
starts from FSAI's values on the pattern the preconditioner would use (the model's ordering, level
and threshold) and lowers log cond(G Â Gᵀ) by gradient steps on G's values alone (Adam; the extreme
eigenvalues from :func:`pcgcvae.training.quality.log_condition_per_graph`: dense up to 1200 rows,
Lanczos eigenvectors and their Rayleigh quotients above), keeping the best iterate.  The CG
iterations (rtol 1e-8, unpreconditioned residual, one seeded random right-hand side) of FSAI and of
that best factor, on the same operator, are what no learned factor on this pattern can be expected to
beat by much: a model that generates one factor per matrix from a few hops of its graph is judged
against this per-matrix optimum (the issue's "2-8 % over FSAI" on 2D Poisson, DESIGN.md).

The problems are the held-out ones of :func:`pcgcvae.training.heldout.evaluate_heldout` (same
generator, seeds and sizes), so its model rows compare directly; with ``--model`` the model's factor
(guard off) is run through the same CG here too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..csr import CSR, scale_symmetric
from ..fsai import fsai_values

DEFAULT_STEPS = 200
DEFAULT_LR = 2e-3
RHS_SEED = 0  # evaluate.solve's right-hand side (the held-out table's)


@dataclass
class LocalOperator:
    """A matrix in the preconditioner's local ordering: A permuted (``a``), scaled (``ahat``, with
    ``dinv`` = D^-1/2), the lower pattern ``s`` of the chosen level, and the permutation ``perm``
    (row i of ``a`` is row ``perm[i]`` of the matrix in its own order)."""

    a: CSR
    ahat: CSR
    dinv: np.ndarray
    s: CSR
    perm: np.ndarray


def local_operator(a: CSR, ordering: str, block_size: int, level: int = 1, threshold: float = 0.02) -> LocalOperator:
    """What :class:`pcgcvae.pc.SPAIFactorPC` builds from a serial operator before any values of G (and
    the permutation: row i of ``a`` is row ``perm[i]`` of the given matrix)."""
    from ..ordering import local_permutation, permute
    from ..pattern import factor_pattern
    from ..petsc_csr import csr_to_mat

    perm = local_permutation(a, ordering, block_size)
    ap = permute(a, perm)
    ahat, dinv = scale_symmetric(ap)
    mat = csr_to_mat(ahat)
    try:
        s, _ = factor_pattern(ahat, mat, level, threshold)
    finally:
        mat.destroy()
    return LocalOperator(ap, ahat, dinv, s, np.arange(a.n) if perm is None else perm)


def log_condition(op: LocalOperator, g: np.ndarray) -> float:
    """log cond(G Â Gᵀ) for the values ``g`` on the pattern (as the optimisation measures it)."""
    import torch

    from .graph import build_graph
    from .quality import log_condition_per_graph

    data = build_graph(op.ahat, op.s)
    with torch.no_grad():
        return float(log_condition_per_graph(torch.from_numpy(np.asarray(g, dtype=np.float64)), data, op.ahat.n)[0])


def optimise_condition(op: LocalOperator, g0: np.ndarray, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                       ) -> tuple[np.ndarray, list[float]]:
    """Values on the pattern that lower log cond(G Â Gᵀ) from ``g0`` (Adam with step ``lr``, ``steps``
    steps): the best iterate and the history of log cond (the first entry is ``g0``'s)."""
    import torch

    from .graph import build_graph
    from .quality import log_condition_per_graph

    data = build_graph(op.ahat, op.s)
    g = torch.tensor(np.asarray(g0, dtype=np.float64), requires_grad=True)
    opt = torch.optim.Adam([g], lr=lr)
    best, best_value, history = np.array(g0, dtype=np.float64), np.inf, []
    for _ in range(steps + 1):
        opt.zero_grad()
        value = log_condition_per_graph(g, data, op.ahat.n)[0]
        v = value.item()
        history.append(v)
        if np.isfinite(v) and v < best_value:
            best, best_value = g.detach().numpy().copy(), v
        value.backward()
        opt.step()
    return best, history


def cg_iterations(op: LocalOperator, g: np.ndarray, rtol: float = 1e-8) -> int:
    """CG iterations on A x = b (b: :func:`pcgcvae.evaluate.solve`'s random vector in the matrix's own order,
    permuted with it; unpreconditioned residual to ``rtol``) with M = Gᵀ G,
    G = Ĝ D^-1/2 for the values ``g`` of Ĝ on the pattern (:func:`pcgcvae.trial.full_cg`)."""
    from ..petsc_csr import csr_to_mat
    from ..trial import full_cg

    s = op.s
    G = csr_to_mat(s.with_data(np.asarray(g, dtype=np.float64) * op.dinv[s.indices]))
    P = csr_to_mat(op.a)
    b = P.createVecLeft()
    try:
        b.setArray(np.random.default_rng(RHS_SEED).standard_normal(op.a.n)[op.perm])
        result = full_cg(P, G, b, rtol=rtol, max_it=20 * op.a.n)
    finally:
        for obj in (b, P, G):
            obj.destroy()
    if not result.converged:
        raise RuntimeError(f"CG did not converge in {result.steps} iterations")
    return result.steps


def model_values(op: LocalOperator, model: str, block_size: int) -> np.ndarray:
    """The model's factor values on a level-1 pattern (prior mean, row-normalised; no guard)."""
    from ..csr import normalise_rows
    from ..features import build_arrays
    from ..inference import load_inference_model
    from ..spectrum import spectral_feature

    net, _ = load_inference_model(model)
    base = fsai_values(op.ahat, op.s) if net.residual else None
    spectral = spectral_feature(op.ahat, op.s, base) if net.spectral_gate is not None else None
    raw = net.generate(build_arrays(op.ahat, op.s, block_size=block_size), use_mean=True, base=base,
                       spectral=spectral)[0]
    return normalise_rows(op.s.with_data(raw.astype(np.float64)), op.ahat)


def measure(family: str, sizes: list[int], sizes_3d: list[int], ordering: str, level: int, steps: int, lr: float,
            model: str | None = None, seed: int = 1000) -> list[dict]:
    """One row per held-out problem: FSAI's and the optimised factor's log cond and CG iterations."""
    import firedrake as fd

    from ..petsc_csr import mat_to_csr
    from ..problems import build_problem
    from .heldout import heldout_spec

    rows = []
    for dim, size in [(2, s) for s in sizes] + [(3, s) for s in sizes_3d]:
        spec = heldout_spec(family, size, dim, seed)
        P = build_problem(spec, comm=fd.COMM_SELF).assemble_matrix()
        bs = P.getBlockSize()
        op = local_operator(mat_to_csr(P), ordering, bs, level)
        fsai = fsai_values(op.ahat, op.s)
        t0 = time.perf_counter()
        best, history = optimise_condition(op, fsai, steps, lr)
        row = {"family": family, "dim": dim, "size": size, "n": op.a.n, "level": level, "ordering": ordering,
               "steps": steps, "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
               "log_cond_fsai": round(history[0], 4), "log_cond_optimised": round(min(history), 4),
               "iterations_fsai": cg_iterations(op, fsai), "iterations_optimised": cg_iterations(op, best)}
        row["optimised/fsai"] = round(row["iterations_optimised"] / row["iterations_fsai"], 3)
        if model is not None and level == 1:
            g = model_values(op, model, bs)
            row.update(model=model, log_cond_model=round(log_condition(op, g), 4),
                       iterations_model=cg_iterations(op, g))
            row["model/fsai"] = round(row["iterations_model"] / row["iterations_fsai"], 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
        P.destroy()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.training.ceiling", description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["poisson", "elasticity"], required=True)
    ap.add_argument("--sizes", type=int, nargs="*", default=[48], help="2D held-out sizes (cells per side)")
    ap.add_argument("--sizes-3d", type=int, nargs="*", default=[], help="3D held-out sizes (elasticity)")
    ap.add_argument("--ordering", default="nd", help="the local ordering (the shipped models': nd)")
    ap.add_argument("--level", type=int, default=1, choices=[1, 2])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--model", default=None, help="also run this model's factor through the same CG (level 1 only)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    if args.sizes_3d and args.family != "elasticity":
        ap.error("--sizes-3d: 3D held-out problems exist for the elasticity family only")
    rows = measure(args.family, args.sizes, args.sizes_3d, args.ordering, args.level, args.steps, args.lr, args.model)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(["python -m pcgcvae.training.ceiling", *sys.argv[1:]]),
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
