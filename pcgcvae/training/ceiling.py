"""The headroom a factor has over FSAI on a fixed pattern: per-matrix optimisation of G's values.

    python -m pcgcvae.training.ceiling --family poisson --sizes 48 --objective cg --probes 32 --steps 300 \
        --lr 3e-3 --model poisson --out ceiling.json

FSAI minimises Kaporin's number on the pattern, not CG's iterations.  This builds the local operator and
pattern the preconditioner would use (ordering, level 1 or 2, threshold 0.02), starts from FSAI's values or
from a model's factor (``--start``) and lowers an objective by Adam steps on G's values alone, keeping the
best iterate: ``--objective condition``, log cond(G Â Gᵀ) (:func:`condition_objective`, the training's
condition term), or ``--objective cg``, the unrolled preconditioned CG's energy-error rate over a fraction
of FSAI's iterations (:func:`cg_objective`).  The CG iterations (rtol 1e-8, unpreconditioned residual,
:func:`pcgcvae.evaluate.solve`'s random right-hand side) of FSAI, of the optimum and, with ``--model``, of
the model's own factor (guard off), through one harness (:func:`cg_iterations`), say how far a factor on
this pattern can beat FSAI on that matrix and how much of it a model takes (``docs/ceiling/README.md``).

The problems are the held-out ones of :func:`pcgcvae.training.heldout.evaluate_heldout` (same
generator, seeds and sizes), so its model rows compare directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..csr import CSR, scale_symmetric
from ..fsai import fsai_values

if TYPE_CHECKING:
    import torch

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


Objective = Callable[["torch.Tensor"], "torch.Tensor"]


def condition_objective(op: LocalOperator) -> Objective:
    """log cond(G Â Gᵀ) as a function of G's values on the pattern (differentiable)."""
    from .graph import build_graph
    from .quality import log_condition_per_graph

    data = build_graph(op.ahat, op.s)
    return lambda g: log_condition_per_graph(g, data, op.ahat.n)[0]


def cg_objective(op: LocalOperator, steps: int, probes: int = 4, seed: int = 1) -> Objective:
    """The mean log energy-norm error reduction per step of ``steps`` preconditioned CG steps on
    Â x = b (M = Gᵀ G, x0 = 0) over ``probes`` seeded random right-hand sides b (x* = Â⁻¹ b by a sparse
    direct solve), unrolled and differentiable in G's values (:func:`pcgcvae.training.quality.cg_rate_per_graph`
    on Â in float64): the rate CG's iterations follow (lower is faster).  The probes are not the right-hand
    side :func:`cg_iterations` counts on, so an optimum cannot fit that vector."""
    import torch
    from scipy.sparse.linalg import spsolve

    from .graph import build_graph
    from .quality import cg_rate_per_graph

    n = op.ahat.n
    data = build_graph(op.ahat, op.s)
    operator = (torch.from_numpy(op.ahat.rows()), torch.from_numpy(op.ahat.indices.astype(np.int64)),
                torch.from_numpy(op.ahat.data.astype(np.float64)))
    rhs = np.random.default_rng(seed).standard_normal((n, probes))
    xstar = torch.from_numpy(np.asarray(spsolve(op.ahat.scipy().tocsc(), rhs)).reshape(n, probes))
    run = torch.tensor([steps])
    return lambda g: cg_rate_per_graph(g, data, run, xstar, operator=operator)[0]


def evaluate(objective: Objective, g: np.ndarray) -> float:
    """The objective's value at the values ``g``."""
    import torch

    with torch.no_grad():
        return objective(torch.from_numpy(np.asarray(g, dtype=np.float64))).item()


def log_condition(op: LocalOperator, g: np.ndarray) -> float:
    """log cond(G Â Gᵀ) for the values ``g`` on the pattern (as the optimisation measures it)."""
    return evaluate(condition_objective(op), g)


def optimise(objective: Objective, g0: np.ndarray, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
             ) -> tuple[np.ndarray, list[float]]:
    """Values on the pattern that lower ``objective`` from ``g0`` (Adam with step ``lr``, ``steps``
    steps): the best iterate and the history of the objective (the first entry is ``g0``'s)."""
    import torch

    g = torch.tensor(np.asarray(g0, dtype=np.float64), requires_grad=True)
    opt = torch.optim.Adam([g], lr=lr)
    best, best_value, history = np.array(g0, dtype=np.float64), np.inf, []
    for _ in range(steps + 1):
        opt.zero_grad()
        value = objective(g)
        v = value.item()
        history.append(v)
        if np.isfinite(v) and v < best_value:
            best, best_value = g.detach().numpy().copy(), v
        value.backward()
        opt.step()
    return best, history


def cg_iterations(op: LocalOperator, g: np.ndarray, rtol: float = 1e-8, rhs: np.ndarray | None = None,
                  max_it: int | None = None) -> int:
    """CG iterations on A x = b (b: ``rhs``, default :func:`pcgcvae.evaluate.solve`'s random vector, in the
    matrix's own order, permuted with it; unpreconditioned residual to ``rtol``) with M = Gᵀ G,
    G = Ĝ D^-1/2 for the values ``g`` of Ĝ on the pattern (:func:`pcgcvae.trial.full_cg`); RuntimeError if CG
    has not converged in ``max_it`` iterations (default 20 n)."""
    from ..petsc_csr import csr_to_mat
    from ..trial import full_cg

    s = op.s
    G = csr_to_mat(s.with_data(np.asarray(g, dtype=np.float64) * op.dinv[s.indices]))
    P = csr_to_mat(op.a)
    b = P.createVecLeft()
    try:
        given = np.random.default_rng(RHS_SEED).standard_normal(op.a.n) if rhs is None else np.asarray(rhs)
        b.setArray(given[op.perm])
        result = full_cg(P, G, b, rtol=rtol, max_it=20 * op.a.n if max_it is None else max_it)
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


def save_factors_npz(path: Path, op: LocalOperator, candidates: dict[str, np.ndarray]) -> Path:
    """Write ``op`` (A in the local ordering, D^-1/2, the pattern, the permutation) and the values of Ĝ on
    the pattern of each candidate (``values_<name>``) to ``path``; :func:`load_factors_npz` reads it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, a_indptr=op.a.indptr, a_indices=op.a.indices, a_data=op.a.data, dinv=op.dinv,
                        s_indptr=op.s.indptr, s_indices=op.s.indices, perm=op.perm,
                        **{f"values_{name}": np.asarray(g, dtype=np.float64) for name, g in candidates.items()})
    return path


def load_factors_npz(path: Path) -> tuple[LocalOperator, dict[str, np.ndarray]]:
    """The local operator and the candidates' values written by :func:`save_factors_npz`."""
    with np.load(path) as z:
        a = CSR(z["a_indptr"], z["a_indices"], z["a_data"])
        s = CSR(z["s_indptr"], z["s_indices"], np.zeros(len(z["s_indices"])))
        values = {k[len("values_"):]: z[k] for k in z.files if k.startswith("values_")}
        perm = z["perm"]
    ahat, dinv = scale_symmetric(a)
    return LocalOperator(a, ahat, dinv, s, perm), values


def measure(family: str, sizes: list[int], sizes_3d: list[int], ordering: str, level: int, steps: int, lr: float,
            model: str | None = None, seed: int = 1000, objective: str = "condition", cg_fraction: float = 1.0,
            probes: int = 4, start: str = "fsai", save_factors: Path | None = None) -> list[dict]:
    """One row per held-out problem: FSAI's, the optimised factor's (and the model's) log cond, CG
    iterations and, with ``objective`` "cg", the unrolled-CG rate over ``cg_fraction`` x FSAI's
    iterations (:func:`cg_objective`), which the optimisation then lowers instead of log cond; ``start``: from
    FSAI's values or from the model's factor (``model`` needed).  With ``save_factors``, each problem's
    local operator and every candidate's values go to ``save_factors/<family>-<dim>d-<size>-l<level>.npz``
    (:func:`save_factors_npz`)."""
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
        row = {"family": family, "dim": dim, "size": size, "n": op.a.n, "level": level, "ordering": ordering,
               "objective": objective, "steps": steps, "lr": lr, "iterations_fsai": cg_iterations(op, fsai)}
        candidates = {"fsai": fsai}
        if model is not None and level == 1:
            row["model"] = model
            candidates["model"] = model_values(op, model, bs)
        measures = {"log_cond": condition_objective(op)}
        if objective == "cg":
            row["cg_steps"] = max(1, round(cg_fraction * row["iterations_fsai"]))
            row["probes"] = probes
            measures["cg_rate"] = cg_objective(op, row["cg_steps"], probes)
        t0 = time.perf_counter()
        row["start"] = start
        g0 = candidates["model"] if start == "model" else fsai
        candidates["optimised"], _ = optimise(measures["cg_rate" if objective == "cg" else "log_cond"], g0, steps, lr)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        for name, g in candidates.items():
            for key, fn in measures.items():
                row[f"{key}_{name}"] = round(evaluate(fn, g), 5)
            if name != "fsai":
                row[f"iterations_{name}"] = cg_iterations(op, g)
                row[f"{name}/fsai"] = round(row[f"iterations_{name}"] / row["iterations_fsai"], 3)
        if save_factors is not None:
            row["factors"] = str(save_factors_npz(save_factors / f"{family}-{dim}d-{size}-l{level}.npz", op,
                                                  candidates))
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
    ap.add_argument("--objective", choices=["condition", "cg"], default="condition",
                    help="what the optimisation lowers: log cond(G Â Gᵀ), or the unrolled CG rate (cg_objective)")
    ap.add_argument("--cg-fraction", type=float, default=1.0,
                    help="--objective cg: unrolled CG steps as a fraction of FSAI's iterations")
    ap.add_argument("--probes", type=int, default=4, help="--objective cg: random solutions averaged over")
    ap.add_argument("--start", choices=["fsai", "model"], default="fsai",
                    help="start the optimisation from FSAI's values or from the model's factor (needs --model)")
    ap.add_argument("--model", default=None, help="also run this model's factor through the same CG (level 1 only)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    ap.add_argument("--save-factors", type=Path, default=None,
                    help="write each problem's local operator and the candidates' values of G here (.npz per problem)")
    args = ap.parse_args(argv)
    if args.sizes_3d and args.family != "elasticity":
        ap.error("--sizes-3d: 3D held-out problems exist for the elasticity family only")
    if args.start == "model" and (args.model is None or args.level != 1):
        ap.error("--start model needs --model (and pattern level 1)")
    rows = measure(args.family, args.sizes, args.sizes_3d, args.ordering, args.level, args.steps, args.lr, args.model,
                   objective=args.objective, cg_fraction=args.cg_fraction, probes=args.probes, start=args.start,
                   save_factors=args.save_factors)
    if args.out:
        given = sys.argv[1:] if argv is None else argv
        args.out.write_text(json.dumps({"command": " ".join(["python -m pcgcvae.training.ceiling", *given]),
                                        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
