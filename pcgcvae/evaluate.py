"""Solving with PETSc KSP and counting iterations, for held-out metrics,
tests and the benchmark."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
from petsc4py import PETSc

from .pc_options import PRECONDITIONERS

_counter = itertools.count()



@dataclass
class SolveResult:
    """Outcome of one KSP solve."""

    iterations: int
    converged: bool
    reason: int
    setup_seconds: float
    solve_seconds: float
    residuals: np.ndarray
    pc_stats: dict


def parallel_options(name: str, size: int) -> dict[str, object]:
    """PETSc options of a named preconditioner, adapted to the communicator size."""
    opts = dict(PRECONDITIONERS[name])
    if name == "icc" and size > 1:
        opts = {"pc_type": "bjacobi", "sub_pc_type": "icc"}
    if name == "sor" and size > 1:
        opts = {"pc_type": "bjacobi", "sub_pc_type": "sor"}
    return opts


def _tril_nnz(P: PETSc.Mat) -> int:
    """Nonzeros of the lower triangles of the ranks' diagonal blocks (= nnz of ICC(0))."""
    local = P if P.getComm().getSize() == 1 else P.getDiagonalBlock()
    indptr, indices, _ = local.getValuesCSR()
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return int(P.getComm().tompi4py().allreduce(int(np.count_nonzero(indices <= rows))))


def preconditioner_nnz(ksp: PETSc.KSP, options: dict[str, object], P: PETSc.Mat) -> int | None:
    """Nonzeros stored by the preconditioner set up from ``options``, where that is well defined.

    Reads only the Python PC's statistics, never PETSc's factor objects, so it also
    works after Firedrake has finished with the KSP.
    """
    pc = ksp.getPC()
    if pc.getType() == "python":
        ctx = pc.getPythonContext()
        return getattr(ctx, "stats", {}).get("nnz_G")
    if options.get("pc_type") == "jacobi":
        return P.getSize()[0]
    if options.get("pc_type") == "icc" or options.get("sub_pc_type") == "icc":
        return _tril_nnz(P)
    return None


def solve(P: PETSc.Mat, options: dict[str, object], b: PETSc.Vec | None = None, rtol: float = 1e-8,
          max_it: int = 20000, seed: int = 0) -> SolveResult:
    """CG on ``P x = b`` with the preconditioner given by ``options`` (no prefix).

    ``b`` defaults to a random vector from ``seed`` (the same for any number
    of ranks).  Raises nothing on divergence: see ``converged``.
    """
    comm = P.getComm()
    prefix = f"pcgcvae_eval{next(_counter)}_"
    opts = PETSc.Options()
    full = {"ksp_type": "cg", "ksp_rtol": rtol, "ksp_atol": 0.0, "ksp_max_it": max_it,
            "ksp_norm_type": "unpreconditioned", **options}
    for k, v in full.items():
        opts[prefix + k] = v
    ksp = PETSc.KSP().create(comm=comm)
    try:
        ksp.setOptionsPrefix(prefix)
        ksp.setOperators(P)
        ksp.setFromOptions()
        ksp.setConvergenceHistory(length=max_it + 1)
        x = P.createVecRight()
        if b is None:
            b = P.createVecLeft()
            n = b.getSize()
            lo, hi = b.getOwnershipRange()
            rng = np.random.default_rng(seed)
            b.array[:] = rng.standard_normal(n)[lo:hi]
        t0 = time.perf_counter()
        ksp.setUp()
        t1 = time.perf_counter()
        ksp.solve(b, x)
        t2 = time.perf_counter()
        reason = ksp.getConvergedReason()
        pc = ksp.getPC()
        ctx = pc.getPythonContext() if pc.getType() == "python" else None
        stats = dict(getattr(ctx, "stats", {}))
        return SolveResult(ksp.getIterationNumber(), reason > 0, reason, t1 - t0, t2 - t1,
                           np.array(ksp.getConvergenceHistory()), stats)
    finally:
        ksp.destroy()
        for k in full:
            opts.delValue(prefix + k)
