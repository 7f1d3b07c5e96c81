"""The stack is real: everything imports together and Firedrake solves."""

from __future__ import annotations


def test_imports_together() -> None:
    import firedrake  # noqa: F401
    import mpi4py
    import petsc4py
    import torch
    import torch_geometric
    from petsc4py import PETSc

    assert PETSc.Sys.getVersion()[:2] == (3, 26)
    assert petsc4py.__version__.startswith("3.26")
    assert torch.__version__.startswith("2.13")
    assert torch_geometric.__version__.startswith("2.8")
    assert mpi4py.MPI.Get_library_version()


def test_firedrake_poisson_cg_icc() -> None:
    import firedrake as fd

    mesh = fd.UnitSquareMesh(32, 32)
    V = fd.FunctionSpace(mesh, "CG", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    a = fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
    L = fd.Constant(1.0) * v * fd.dx
    uh = fd.Function(V)
    solver = fd.LinearVariationalSolver(
        fd.LinearVariationalProblem(a, L, uh, bcs=fd.DirichletBC(V, 0, "on_boundary")),
        solver_parameters={"ksp_type": "cg", "pc_type": "icc", "ksp_rtol": 1e-8},
    )
    solver.solve()
    ksp = solver.snes.ksp
    assert ksp.getConvergedReason() > 0
    assert 5 < ksp.getIterationNumber() < 100
    assert abs(fd.assemble(uh * fd.dx) - 0.0351) < 1e-3  # ∫u for -Δu = 1 on the unit square
