"""Firedrake solves in parallel on this stack."""

from __future__ import annotations


def test_firedrake_poisson_cg_icc_parallel(comm) -> None:
    import firedrake as fd

    mesh = fd.UnitSquareMesh(32, 32)
    assert mesh.comm.size == comm.size
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    uh = fd.Function(V)
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx, fd.Constant(1.0) * v * fd.dx, uh,
                                    bcs=fd.DirichletBC(V, 0, "on_boundary")),
        solver_parameters={"ksp_type": "cg", "pc_type": "bjacobi", "sub_pc_type": "icc", "ksp_rtol": 1e-8},
    )
    solver.solve()
    assert solver.snes.ksp.getConvergedReason() > 0
    assert abs(fd.assemble(uh * fd.dx) - 0.0351) < 1e-3
