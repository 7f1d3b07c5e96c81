"""Poisson with a heterogeneous coefficient on an unstructured mesh, solved
with CG and the learned GCVAE preconditioner.

    python firedrake_demos/poisson.py            # serial
    mpiexec -n 2 python firedrake_demos/poisson.py
    python firedrake_demos/poisson.py -quick     # small, for tests
    python firedrake_demos/poisson.py -size 400 -plot history.png

Options are PETSc options (the script reads them from PETSc's database, so
they sit beside -log_view and friends).

The only difference from a Firedrake solve you already have is the two
``solver_parameters`` keys of ``GCVAE`` below.  The script also runs the
usual preconditioners on the same problem and prints a table.
"""

from __future__ import annotations

import firedrake as fd
from common import compare, load_model_once, print_table, reference_preconditioners, save_history_plot

# --- what a user adds to their solver_parameters --------------------------------
GCVAE = {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC"}
# ---------------------------------------------------------------------------------

BASE = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_norm_type": "unpreconditioned", "mat_type": "aij"}


def build(n: int):
    """-div(kappa grad u) = 1 on a randomly perturbed unstructured mesh, log-normal kappa."""
    from pcgcvae.problems import ProblemSpec, build_problem

    spec = ProblemSpec("poisson", n, degree=1, mesh="perturbed", seed=7,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.1})
    return build_problem(spec)


def main() -> None:
    opts = fd.PETSc.Options()
    quick = opts.getBool("quick", False)
    size = opts.getInt("size", 32 if quick else 200)  # cells per side
    plot = opts.getString("plot", "poisson_convergence.png")
    problem = build(size)
    parallel = problem.V.mesh().comm.size > 1
    candidates = {"GCVAE": GCVAE, **reference_preconditioners(parallel, gamg_label="GAMG")}
    load_model_once("poisson")
    rows = compare(problem, BASE, candidates)
    print_table(f"Poisson, P1, log-normal kappa, n = {problem.V.dim()} dofs, {problem.V.mesh().comm.size} rank(s)",
                rows)
    save_history_plot(rows, plot, "Poisson (log-normal kappa)")
    fd.PETSc.Sys.Print(f"convergence history: {plot}")


if __name__ == "__main__":
    main()
