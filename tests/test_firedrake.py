"""GCVAEPC and FSAIPC through Firedrake solver_parameters: assembled AIJ,
matrix-free with AssembledPC, Poisson and elasticity (block size 2 and 3)."""

from __future__ import annotations

import pytest

from pcgcvae.problems import ProblemSpec, build_problem

CG = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_norm_type": "unpreconditioned"}


def iterations(problem, params: dict) -> int:
    _, ksp = problem.solve({**CG, **params})
    assert ksp.getConvergedReason() > 0, params
    return ksp.getIterationNumber()


def gcvae(model) -> dict:
    return {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", "pc_gcvae_model": str(model)}


FSAI = {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"}


def test_poisson_aij(tiny_poisson) -> None:
    p = build_problem(ProblemSpec("poisson", 24, mesh="perturbed", seed=1,
                                  params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.15}))
    jac = iterations(p, {"mat_type": "aij", "pc_type": "jacobi"})
    assert iterations(p, {"mat_type": "aij", **FSAI}) < 0.8 * jac
    assert iterations(p, {"mat_type": "aij", **gcvae(tiny_poisson)}) < jac


def test_poisson_matfree_assembledpc(tiny_poisson) -> None:
    p = build_problem(ProblemSpec("poisson", 16, degree=2, mesh="lshape", seed=2,
                                  params={"kappa": "jumps", "contrast": 100.0}))
    jac = iterations(p, {"mat_type": "aij", "pc_type": "jacobi"})
    params = {"mat_type": "matfree", "pc_type": "python", "pc_python_type": "firedrake.AssembledPC",
              "assembled_pc_type": "python", "assembled_pc_python_type": "pcgcvae.GCVAEPC",
              "assembled_pc_gcvae_model": str(tiny_poisson)}
    assert iterations(p, params) < jac


def test_elasticity_2d_block_size_2(tiny_elasticity) -> None:
    p = build_problem(ProblemSpec("elasticity", 12, dim=2, seed=3, params={"E_sigma": 1.0, "nu": 0.3}))
    assert p.block_size == 2
    jac = iterations(p, {"mat_type": "aij", "pc_type": "jacobi"})
    assert iterations(p, {"mat_type": "aij", **FSAI}) < jac
    assert iterations(p, {"mat_type": "aij", **gcvae(tiny_elasticity)}) < jac


def test_elasticity_3d_block_size_3(tiny_elasticity) -> None:
    p = build_problem(ProblemSpec("elasticity", 5, dim=3, seed=4, params={"E_sigma": 0.5, "nu": 0.35}))
    assert p.block_size == 3
    jac = iterations(p, {"mat_type": "aij", "pc_type": "jacobi"})
    assert iterations(p, {"mat_type": "aij", **gcvae(tiny_elasticity)}) < jac
    assert iterations(p, {"mat_type": "baij", **gcvae(tiny_elasticity)}) < jac


def test_shipped_poisson_model_beats_fsai_on_held_out_problem() -> None:
    """The shipped poisson model on an unseen log-normal Poisson problem (9409 dofs, 18x the training
    median): fewer CG iterations than classical FSAI on the same pattern (same ordering) at both pattern
    levels, and the issue's targets of 0.5x / 0.35x Jacobi (167 vs 174 and 122 vs 124, Jacobi 358, when
    this test was written)."""
    from pcgcvae.training.checkpoint import shipped_model_path
    from pcgcvae.training.heldout import evaluate_heldout

    result = evaluate_heldout(shipped_model_path("poisson"), "poisson", [96], samples=1)
    (row,) = result["rows"]
    assert row["n"] == 9409 and result["ordering"] == "nd"
    assert row["gcvae"] < row["fsai"] and row["gcvae2"] < row["fsai2"]
    assert row["gcvae"] <= 0.5 * row["jacobi"] and row["gcvae2"] <= 0.35 * row["jacobi"]


def test_shipped_elasticity_model_on_held_out_3d_problem() -> None:
    """The shipped elasticity model on an unseen 3D problem (8³ P1 cells, 2187 dofs, larger than any 3D
    training problem): at most half of Jacobi's CG iterations and within 10 % of FSAI (84 vs 176 and 81
    when this test was written); the card's table marks the row as 3D."""
    from pcgcvae.training.checkpoint import shipped_model_path
    from pcgcvae.training.heldout import evaluate_heldout

    result = evaluate_heldout(shipped_model_path("elasticity"), "elasticity", [], samples=1, sizes_3d=[16])
    (row,) = result["rows"]
    assert row["dim"] == 3 and row["spec"]["size"] == 8 and row["n"] == 2187
    assert row["gcvae"] <= 0.5 * row["jacobi"] and row["gcvae"] <= 1.1 * row["fsai"]
    assert len(result["summary"]["gcvae/jacobi"]) == 1


def test_heldout_3d_needs_elasticity() -> None:
    """3D held-out problems are refused for the poisson family with a message naming the problem."""
    from pcgcvae.training.checkpoint import shipped_model_path
    from pcgcvae.training.heldout import evaluate_heldout

    with pytest.raises(ValueError, match="elasticity family only"):
        evaluate_heldout(shipped_model_path("poisson"), "poisson", [8], sizes_3d=[8])


def test_guard_starts_from_firedrakes_near_nullspace() -> None:
    """The shipped elasticity model's guard runs its short CG from the rigid-body modes a Firedrake user passes
    as ``near_nullspace`` (the solver sets them on the assembled matrix, as for GAMG), the start its thresholds
    were calibrated with; without them it takes the random start and that start's threshold."""
    p = build_problem(ProblemSpec("elasticity", 12, dim=2, seed=3, params={"E_sigma": 1.0, "nu": 0.3}))
    params = {"mat_type": "aij", "pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC",
              "pc_gcvae_guard_threshold": 1e9, "pc_gcvae_guard_full_rows": 0}  # the short runs always run here
    _, ksp = p.solve({**CG, **params})
    ctx = ksp.getPC().getPythonContext()
    meta = ctx.model_info["meta"]
    assert meta["guard_start"] == "near-nullspace" and p.near_nullspace is not None
    guard = ctx.stats["guard"]
    assert guard["start"] == "near-nullspace" and guard["signal"] == "short CG"
    assert guard["ratio_threshold"] == meta["guard_ratio_by_start"]["near-nullspace"]["1"]
    p.near_nullspace = None
    _, ksp = p.solve({**CG, **params})
    guard = ksp.getPC().getPythonContext().stats["guard"]
    assert guard["start"] == "random" and guard["ratio_threshold"] == meta["guard_ratio_by_start"]["random"]["1"]


@pytest.mark.parametrize("pc", ["FSAIPC", "GCVAEPC"])
def test_time_loop_keeps_the_factor_while_the_operator_is_the_same(tiny_poisson, pc: str) -> None:
    """A LinearVariationalSolver in a loop assembles the operator again on every solve (constant_jacobian
    left False), so PETSc sets the preconditioner up again: with the same values the factor is kept (and
    the solves are the same); after the coefficient changes it is built again."""
    import firedrake as fd

    mesh = fd.UnitSquareMesh(16, 16)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    kappa = fd.Constant(1.0)
    f = fd.Function(V)
    uh = fd.Function(V)
    problem = fd.LinearVariationalProblem(kappa * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, f * v * fd.dx, uh,
                                          bcs=fd.DirichletBC(V, 0, "on_boundary"))
    params = {**CG, "pc_type": "python", "pc_python_type": f"pcgcvae.{pc}"}
    if pc == "GCVAEPC":
        params["pc_gcvae_model"] = str(tiny_poisson)
    solver = fd.LinearVariationalSolver(problem, solver_parameters=params)
    kept = "the factor itself (same operator values and options)"
    seen = []
    for step in range(4):
        f.assign(step + 1.0)  # a new right-hand side every step
        if step == 3:
            kappa.assign(2.0)
        solver.solve()
        ksp = solver.snes.ksp
        ctx = ksp.getPC().getPythonContext()
        seen.append((ctx._setups, kept in ctx.stats["reused"], ksp.getIterationNumber()))
    assert [s[:2] for s in seen] == [(1, False), (2, True), (3, True), (4, False)], seen
    assert len({s[2] for s in seen[:3]}) == 1, seen
