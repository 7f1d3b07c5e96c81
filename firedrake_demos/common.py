"""Shared by the demos: solve one problem with several preconditioners and
report iterations, setup and solve time (PETSc log events), preconditioner
nonzeros and the residual history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from firedrake.petsc import PETSc
from mpi4py import MPI

PETSc.Log.begin()


@dataclass
class Row:
    name: str
    iterations: int
    converged: bool
    setup: float
    solve: float
    nnz: int | None
    history: np.ndarray


def _event_time(name: str) -> float:
    return PETSc.Log.Event(name).getPerfInfo()["time"]


def preconditioner_nnz(ksp: PETSc.KSP) -> int | None:
    """Nonzeros stored by the preconditioner, where PETSc can tell."""
    pc = ksp.getPC()
    ptype = pc.getType()
    comm = ksp.getComm().tompi4py()
    if ptype == "python":
        ctx = pc.getPythonContext()
        inner = getattr(ctx, "pc", None)  # firedrake.AssembledPC
        if inner is not None and inner.getType() == "python":
            ctx = inner.getPythonContext()
        stats = getattr(ctx, "stats", {})
        return stats.get("nnz_G")
    if ptype == "jacobi":
        return ksp.getOperators()[1].getSize()[0]
    if ptype in ("icc", "ilu"):
        return int(comm.allreduce(pc.getFactorMatrix().getInfo()["nz_used"]))
    if ptype == "bjacobi":
        sub = pc.getBJacobiSubKSP()[0].getPC()
        if sub.getType() in ("icc", "ilu"):
            return int(comm.allreduce(sub.getFactorMatrix().getInfo()["nz_used"]))
    return None


def compare(problem, base: dict, candidates: dict[str, dict]) -> list[Row]:
    """Solve ``problem`` once per candidate; timings are the max over ranks."""
    rows = []
    comm = problem.V.mesh().comm
    for name, params in candidates.items():
        t_setup, t_solve = _event_time("PCSetUp"), _event_time("KSPSolve")
        _, ksp = problem.solve({**base, **params}, options_prefix=f"demo_{name.lower().replace('+', '_')}_")
        setup = _event_time("PCSetUp") - t_setup
        solve = _event_time("KSPSolve") - t_solve - setup
        setup, solve = comm.allreduce(setup, op=MPI.MAX), comm.allreduce(max(solve, 0.0), op=MPI.MAX)
        rows.append(Row(name, ksp.getIterationNumber(), ksp.getConvergedReason() > 0, setup, solve,
                        preconditioner_nnz(ksp), np.array(ksp.getConvergenceHistory())))
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    """A markdown table on rank 0."""
    out = [f"\n{title}\n",
           "| preconditioner | iterations | setup (s) | solve (s) | total (s) | nnz(preconditioner) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        its = str(r.iterations) if r.converged else f"{r.iterations} (not converged)"
        nnz = "-" if r.nnz is None else str(r.nnz)
        out.append(f"| {r.name} | {its} | {r.setup:.3f} | {r.solve:.3f} | {r.setup + r.solve:.3f} | {nnz} |")
    PETSc.Sys.Print("\n".join(out))


def save_history_plot(rows: list[Row], path: str, title: str) -> None:
    """Relative residual against iteration for every row (rank 0 writes the PNG)."""
    if MPI.COMM_WORLD.rank != 0:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if len(r.history):
            ax.semilogy(r.history / r.history[0], label=f"{r.name} ({r.iterations})")
    ax.set_xlabel("CG iteration")
    ax.set_ylabel("relative residual norm")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
