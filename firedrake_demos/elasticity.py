"""Linear elasticity (2D or 3D) with a heterogeneous Young's modulus, solved
with CG and the learned GCVAE preconditioner.

    python firedrake_demos/elasticity.py --dim 2
    mpiexec -n 2 python firedrake_demos/elasticity.py --dim 3
    python firedrake_demos/elasticity.py --dim 3 --quick     # small, for tests

As in your own solve, only the two ``solver_parameters`` keys of ``GCVAE``
change.  GAMG gets the rigid-body near-nullspace, so the comparison is fair.
"""

from __future__ import annotations

import argparse

import firedrake as fd
from common import compare, print_table, save_history_plot

# --- what a user adds to their solver_parameters --------------------------------
GCVAE = {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC"}
# ---------------------------------------------------------------------------------

BASE = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_norm_type": "unpreconditioned", "mat_type": "aij"}


def build(dim: int, n: int):
    """Clamped at x = 0, gravity load, E = exp(field), nu = 0.35."""
    from pcgcvae.problems import ProblemSpec, build_problem

    spec = ProblemSpec("elasticity", n, degree=1, dim=dim, mesh="square", seed=11,
                       params={"E_sigma": 1.0, "corr": 0.3, "nu": 0.35})
    return build_problem(spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, choices=[2, 3], default=2)
    ap.add_argument("--size", type=int, default=None, help="cells per side (default 96 in 2D, 16 in 3D)")
    ap.add_argument("--quick", action="store_true", help="a small problem")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    n = args.size or ((24 if args.dim == 2 else 6) if args.quick else (96 if args.dim == 2 else 16))
    problem = build(args.dim, n)
    parallel = problem.V.mesh().comm.size > 1
    candidates = {
        "GCVAE": GCVAE,
        "FSAI": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"},
        "Jacobi": {"pc_type": "jacobi"},
        "ICC(0)" if not parallel else "bjacobi+ICC(0)":
            {"pc_type": "icc"} if not parallel else {"pc_type": "bjacobi", "sub_pc_type": "icc"},
        "GAMG (rigid-body modes)": {"pc_type": "gamg"},
    }
    rows = compare(problem, BASE, candidates)
    print_table(f"Linear elasticity {args.dim}D, P1, n = {problem.V.dim()} dofs, "
                f"{problem.V.mesh().comm.size} rank(s)", rows)
    plot = args.plot or f"elasticity{args.dim}d_convergence.png"
    save_history_plot(rows, plot, f"Linear elasticity {args.dim}D")
    fd.PETSc.Sys.Print(f"convergence history: {plot}")


if __name__ == "__main__":
    main()
