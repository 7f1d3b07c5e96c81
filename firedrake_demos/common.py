"""Shared by the demos: solve one problem with several preconditioners and
report iterations, setup and solve time (PETSc log events), preconditioner
nonzeros and the residual history."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from firedrake.petsc import PETSc
from mpi4py import MPI

from pcgcvae.evaluate import PRECONDITIONERS, preconditioner_nnz

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


def reference_preconditioners(parallel: bool, gamg_label: str = "GAMG") -> dict[str, dict]:
    """What users run today, on the same problem: FSAI, Jacobi, ICC(0), GAMG, and GAMG with the
    GCVAE factor as its smoother (``-mg_levels_pc_type python -mg_levels_pc_python_type pcgcvae.GCVAEPC``)."""
    icc = ("bjacobi+ICC(0)", {"pc_type": "bjacobi", "sub_pc_type": "icc"}) if parallel else \
        ("ICC(0)", {"pc_type": "icc"})
    return {
        "FSAI": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"},
        "Jacobi": {"pc_type": "jacobi"},
        icc[0]: icc[1],
        gamg_label: {"pc_type": "gamg"},
        f"{gamg_label} + GCVAE smoother": PRECONDITIONERS["gamg-gcvae-smoother"],
    }


def load_model_once(name: str) -> None:
    """Load the GCVAE's exported weights (once per process, no torch) outside the timed solves."""
    import time

    t0 = time.perf_counter()  # the import of the inference module is part of the one-off cost
    from pcgcvae.inference import load_inference_model

    load_inference_model(name)
    PETSc.Sys.Print(f"one-off per process: importing pcgcvae's inference and loading the '{name}' model took "
                    f"{time.perf_counter() - t0:.2f} s (not in the table)")


def compare(problem, base: dict, candidates: dict[str, dict]) -> list[Row]:
    """Solve ``problem`` once per candidate; timings are the max over ranks."""
    rows = []
    comm = problem.V.mesh().comm
    P = problem.assemble_matrix()
    for name, params in candidates.items():
        before = {e: _event_time(e) for e in ("PCSetUp", "KSPSolve", "SNESSolve")}
        prefix = "demo_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + "_"
        _, ksp = problem.solve({**base, **params}, options_prefix=prefix)
        d = {e: _event_time(e) - t for e, t in before.items()}
        setup = d["PCSetUp"]
        # Firedrake sets the PC up inside SNESSolve but outside KSPSolve; whatever part of
        # PCSetUp does not fit outside KSPSolve ran inside it and is not solve time.
        solve = d["KSPSolve"] - max(0.0, setup - (d["SNESSolve"] - d["KSPSolve"]))
        setup, solve = comm.allreduce(setup, op=MPI.MAX), comm.allreduce(max(solve, 0.0), op=MPI.MAX)
        rows.append(Row(name, ksp.getIterationNumber(), ksp.getConvergedReason() > 0, setup, solve,
                        preconditioner_nnz(ksp, params, P), np.array(ksp.getConvergenceHistory())))
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
