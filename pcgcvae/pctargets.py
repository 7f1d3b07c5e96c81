"""Measure the preconditioner's engineering targets (figures, not tests).

    python -m pcgcvae.pctargets --sizes 100 316 1000 --out results/pctargets.json
    mpiexec -n 2 python -m pcgcvae.pctargets --overlap-only --sizes 128

* apply cost: time of one PC apply / one MatMult with A (median of blocks of 50);
* setup time per nonzero of A at each size (GCVAE and FSAI, pattern level 1; the second
  setup of the process, the first also imports torch and loads the model);
* the setup's stages (ordering, scaling, pattern, graph, inference, ...; seconds, max over ranks);
* peak resident memory after setup (this process; run one size per process
  for a clean figure);
* overlap: CG iterations with overlap 1 on this many ranks (compare the
  same command on 1 rank).

Poisson P1 with log-normal κ on the unit square, assembled by Firedrake.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _median_time(fn, reps: int = 50, blocks: int = 5) -> float:  # noqa: ANN001
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps)
    return float(np.median(out))


def measure(size: int, pcs: list[str], overlap_only: bool) -> list[dict]:
    import firedrake as fd
    from petsc4py import PETSc

    from .evaluate import parallel_options, solve
    from .problems import ProblemSpec, build_problem

    spec = ProblemSpec("poisson", size, degree=1, mesh="square", seed=5,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.1})
    P = build_problem(spec).assemble_matrix()
    comm = P.getComm()
    nnz = int(P.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])
    rows = []
    for name in pcs:
        opts = parallel_options(name, comm.getSize())
        if overlap_only:
            stem = "pc_gcvae_" if name.startswith("gcvae") else "pc_fsai_"
            r = solve(P, {**opts, stem + "overlap": 1})
            rows.append({"size": size, "dofs": P.getSize()[0], "ranks": comm.getSize(), "pc": name,
                         "overlap": 1, "iterations": r.iterations})
            continue
        prefix = f"pct_{name}_"
        for k, v in opts.items():
            PETSc.Options()[prefix + k] = v
        setups = []
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for _ in range(2):  # the first setup of a process also imports torch and loads the model
            ksp = PETSc.KSP().create(comm=comm)
            ksp.setOptionsPrefix(prefix)
            ksp.setOperators(P)
            ksp.setType("cg")
            ksp.setFromOptions()
            t0 = time.perf_counter()
            ksp.setUp()
            setups.append(time.perf_counter() - t0)
        setup = setups[1]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        pc = ksp.getPC()
        stages = pc.getPythonContext().stats.get("times", {}) if pc.getType() == "python" else {}
        x, y = P.createVecs()
        x.setRandom()
        t_apply = _median_time(lambda: pc.apply(x, y))  # noqa: B023
        t_mult = _median_time(lambda: P.mult(x, y))  # noqa: B023
        r = solve(P, opts)
        rows.append({"size": size, "dofs": P.getSize()[0], "nnz_A": nnz, "ranks": comm.getSize(), "pc": name,
                     "first_setup_s": round(setups[0], 4), "setup_s": round(setup, 4),
                     "setup_us_per_nnz": round(1e6 * setup / nnz, 4), "peak_rss_before_mb": round(rss0, 1),
                     "apply_over_matmult": round(t_apply / t_mult, 3), "peak_rss_mb": round(peak, 1),
                     "iterations": r.iterations, "stages_s": {k: round(v, 4) for k, v in stages.items()}})
        ksp.destroy()
    fd.PETSc.Sys.Print(json.dumps(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.pctargets", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 316])
    ap.add_argument("--pcs", nargs="+", default=["gcvae", "fsai"])
    ap.add_argument("--overlap-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.argv[1:] = []
    rows = [r for s in args.sizes for r in measure(s, args.pcs, args.overlap_only)]
    if args.out is not None:
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
