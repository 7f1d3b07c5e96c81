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



def test_problem_meshes_are_partitioned_reproducibly(comm) -> None:
    """pcgcvae's problem meshes are partitioned by PETSc's deterministic 'simple' partitioner (PT-Scotch,
    the default here, partitions differently on every run): the same cells on every build, the same as
    Firedrake's own mesh with that partitioner, balanced."""
    import firedrake as fd
    import numpy as np

    from pcgcvae.problems import ProblemSpec, build_mesh

    def owned_midpoints(m) -> np.ndarray:
        x = fd.Function(fd.VectorFunctionSpace(m, "DG", 0)).interpolate(fd.SpatialCoordinate(m))
        return np.sort(np.round(x.dat.data_ro, 10), axis=0)

    simple = {"partitioner_type": "simple"}
    for dim, n, reference in ((2, 8, lambda: fd.UnitSquareMesh(8, 8, distribution_parameters=simple)),
                              (3, 4, lambda: fd.UnitCubeMesh(4, 4, 4, distribution_parameters=simple))):
        spec = ProblemSpec("poisson" if dim == 2 else "elasticity", n, degree=1, mesh="square", dim=dim, seed=1)
        first, second = owned_midpoints(build_mesh(spec)), owned_midpoints(build_mesh(spec))
        assert np.array_equal(first, second)
        assert np.array_equal(first, owned_midpoints(reference()))
        cells = comm.allgather(len(first))
        assert max(cells) - min(cells) <= 1
