"""Poisson with a heterogeneous coefficient on an unstructured mesh, solved
with CG and the learned GCVAE preconditioner.

    python firedrake_demos/poisson.py            # serial
    mpiexec -n 2 python firedrake_demos/poisson.py
    python firedrake_demos/poisson.py --quick    # small, for tests

The only difference from a Firedrake solve you already have is the two
``solver_parameters`` keys of ``GCVAE`` below.  The script also runs the
usual preconditioners on the same problem and prints a table.
"""

from __future__ import annotations

import argparse

import firedrake as fd
from common import compare, print_table, save_history_plot

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=200, help="cells per side")
    ap.add_argument("--quick", action="store_true", help="a small problem (32 cells per side)")
    ap.add_argument("--plot", default="poisson_convergence.png")
    args = ap.parse_args()
    problem = build(32 if args.quick else args.size)
    parallel = problem.V.mesh().comm.size > 1
    candidates = {
        "GCVAE": GCVAE,
        "FSAI": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"},
        "Jacobi": {"pc_type": "jacobi"},
        "ICC(0)" if not parallel else "bjacobi+ICC(0)":
            {"pc_type": "icc"} if not parallel else {"pc_type": "bjacobi", "sub_pc_type": "icc"},
        "GAMG": {"pc_type": "gamg"},
    }
    rows = compare(problem, BASE, candidates)
    print_table(f"Poisson, P1, log-normal kappa, n = {problem.V.dim()} dofs, {problem.V.mesh().comm.size} rank(s)",
                rows)
    save_history_plot(rows, args.plot, "Poisson (log-normal kappa)")
    fd.PETSc.Sys.Print(f"convergence history: {args.plot}")


if __name__ == "__main__":
    main()
