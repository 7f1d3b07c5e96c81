"""Linear elasticity (2D or 3D) with a heterogeneous Young's modulus, solved
with CG and the learned GCVAE preconditioner.

    python firedrake_demos/elasticity.py -dim 2
    mpiexec -n 2 python firedrake_demos/elasticity.py -dim 3
    python firedrake_demos/elasticity.py -dim 3 -quick      # small, for tests
    python firedrake_demos/elasticity.py -dim 2 -size 200 -plot history.png

Options are PETSc options, read from PETSc's database.

As in your own solve, only the two ``solver_parameters`` keys of ``GCVAE``
change.  GAMG gets the rigid-body near-nullspace, so the comparison is fair.
"""

from __future__ import annotations

import firedrake as fd
from common import compare, load_model_once, print_table, reference_preconditioners, save_history_plot

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
    opts = fd.PETSc.Options()
    dim = opts.getInt("dim", 2)
    if dim not in (2, 3):
        raise ValueError(f"-dim must be 2 or 3, got {dim}")
    quick = opts.getBool("quick", False)
    n = opts.getInt("size", (24 if dim == 2 else 6) if quick else (96 if dim == 2 else 16))  # cells per side
    plot = opts.getString("plot", f"elasticity{dim}d_convergence.png")
    problem = build(dim, n)
    parallel = problem.V.mesh().comm.size > 1
    candidates = {"GCVAE": GCVAE, **reference_preconditioners(parallel, gamg_label="GAMG (rigid-body modes)")}
    load_model_once("elasticity")
    rows = compare(problem, BASE, candidates)
    print_table(f"Linear elasticity {dim}D, P1, n = {problem.V.dim()} dofs, "
                f"{problem.V.mesh().comm.size} rank(s)", rows)
    save_history_plot(rows, plot, f"Linear elasticity {dim}D")
    fd.PETSc.Sys.Print(f"convergence history: {plot}")


if __name__ == "__main__":
    main()
