"""GCVAEPC and FSAIPC under MPI (2 and 3 ranks): per-rank factors, overlap,
a rank that owns very few rows, and collective errors that never hang."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import apply_python_pc, cg_iterations, laplacian_2d
from petsc4py import PETSc

from pcgcvae.evaluate import parallel_options


def few_rows_laplacian(m: int) -> PETSc.Mat:
    """A Laplacian whose last rank owns only 2 rows."""
    comm = PETSc.COMM_WORLD
    n = m * m
    size, rank = comm.getSize(), comm.getRank()
    rest = n - 2
    local = 2 if rank == size - 1 else rest // (size - 1) + (1 if rank < rest % (size - 1) else 0)
    A = laplacian_2d(m, comm=PETSc.COMM_SELF)
    B = PETSc.Mat().createAIJ(size=((local, n), (local, n)), nnz=(5, 4), comm=comm)
    lo, hi = B.getOwnershipRange()
    indptr, indices, data = A.getValuesCSR()
    for i in range(lo, hi):
        B.setValues(i, indices[indptr[i]:indptr[i + 1]], data[indptr[i]:indptr[i + 1]])
    B.assemble()
    return B


def test_fsai_overlap_is_rank_independent(comm) -> None:
    A = laplacian_2d(20, kappa_seed=0)
    natural = {"pc_fsai_ordering": "natural"}  # the serial factor's order (see the nd test below)
    serial = cg_iterations(laplacian_2d(20, comm=PETSc.COMM_SELF, kappa_seed=0),
                           {**parallel_options("fsai", 1), **natural})
    block = cg_iterations(A, {**parallel_options("fsai", comm.size), **natural})
    ov = cg_iterations(A, {**parallel_options("fsai", comm.size), "pc_fsai_overlap": 1, **natural})
    assert ov <= serial + 1  # level 1 with overlap 1 reproduces the serial factor
    assert ov <= block


@pytest.mark.parametrize("overlap", [0, 1])
def test_gcvae_parallel_beats_jacobi(comm, tiny_poisson, overlap: int) -> None:
    A = laplacian_2d(20, kappa_seed=1)
    jac = cg_iterations(A, {"pc_type": "jacobi"})
    its = cg_iterations(A, {**parallel_options("gcvae", comm.size), "pc_gcvae_model": str(tiny_poisson),
                            "pc_gcvae_overlap": overlap})
    assert its < jac


def test_gcvae_overlap_close_to_serial(comm, tiny_poisson) -> None:
    opts = {**parallel_options("gcvae", 1), "pc_gcvae_model": str(tiny_poisson)}
    serial = cg_iterations(laplacian_2d(24, comm=PETSc.COMM_SELF, kappa_seed=2), opts)
    par = cg_iterations(laplacian_2d(24, kappa_seed=2), {**opts, "pc_gcvae_overlap": 2})
    assert par <= 1.10 * serial + 1


@pytest.mark.parametrize("overlap", [0, 1])
def test_rank_with_very_few_rows(comm, tiny_poisson, overlap: int) -> None:
    A = few_rows_laplacian(10)
    assert comm.allgather(A.getLocalSize()[0])[-1] == 2
    for opts in ({**parallel_options("fsai", comm.size), "pc_fsai_overlap": overlap},
                 {**parallel_options("gcvae", comm.size), "pc_gcvae_model": str(tiny_poisson),
                  "pc_gcvae_overlap": overlap}):
        cg_iterations(A, opts)


def test_bad_diagonal_on_one_rank_errors_everywhere(comm) -> None:
    A = laplacian_2d(10)
    hi = A.getOwnershipRange()[1]
    if comm.rank == comm.size - 1:
        A.setValue(hi - 1, hi - 1, -2.0)
    A.assemble()
    ksp = PETSc.KSP().create(comm=PETSc.COMM_WORLD)
    ksp.getPC().setType("python")
    ksp.getPC().setPythonType("pcgcvae.FSAIPC")
    ksp.setOperators(A)
    with pytest.raises(PETSc.Error):
        ksp.setUp()
    # every rank knows the failing rank and reason
    ctx = ksp.getPC().getPythonContext()
    assert ctx.G is None
    ksp.setOperators(laplacian_2d(10))
    b = ksp.getOperators()[0].createVecLeft()
    b.set(1.0)
    x = b.duplicate()
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0


def test_rank_without_rows_is_supported(comm, tiny_poisson) -> None:
    """A rank that owns no rows (as on GAMG's coarse levels) gets an empty factor."""
    m = 8
    n = m * m
    sizes = [0] + [n // (comm.size - 1) + (1 if r < n % (comm.size - 1) else 0) for r in range(comm.size - 1)]
    A = laplacian_2d(m, comm=PETSc.COMM_SELF, kappa_seed=1)
    B = PETSc.Mat().createAIJ(size=((sizes[comm.rank], n), (sizes[comm.rank], n)), nnz=(5, 4),
                              comm=PETSc.COMM_WORLD)
    lo, hi = B.getOwnershipRange()
    indptr, indices, data = A.getValuesCSR()
    for i in range(lo, hi):
        B.setValues(i, indices[indptr[i]:indptr[i + 1]], data[indptr[i]:indptr[i + 1]])
    B.assemble()
    jac = cg_iterations(B, {"pc_type": "jacobi"})
    for opts in (parallel_options("fsai", comm.size),
                 {**parallel_options("gcvae", comm.size), "pc_gcvae_model": str(tiny_poisson)},
                 {**parallel_options("fsai", comm.size), "pc_fsai_overlap": 1}):
        assert cg_iterations(B, opts) < jac


def test_gamg_with_spai_smoothers(comm, tiny_poisson) -> None:
    """As multigrid smoothers inside GAMG (coarse levels may leave ranks without rows)."""
    A = laplacian_2d(24, kappa_seed=2)
    for cls, extra in (("FSAIPC", {}), ("GCVAEPC", {"mg_levels_pc_gcvae_model": str(tiny_poisson)})):
        its = cg_iterations(A, {"pc_type": "gamg", "mg_levels_ksp_type": "chebyshev", "mg_levels_pc_type": "python",
                                "mg_levels_pc_python_type": f"pcgcvae.{cls}", **extra})
        assert its < 40


def test_apply_matches_serial_factor_with_overlap(comm) -> None:
    """FSAI level 1 with overlap 1: the parallel M equals the serial M (in the natural order)."""
    m = 9
    A = laplacian_2d(m, kappa_seed=3)
    As = laplacian_2d(m, comm=PETSc.COMM_SELF, kappa_seed=3)
    natural = {"pc_fsai_ordering": "natural"}
    full = np.random.default_rng(0).standard_normal(m * m)
    y = apply_python_pc(A, full, pc_fsai_overlap=1, **natural)
    ys = apply_python_pc(As, full, **natural)
    lo, hi = A.getOwnershipRange()
    assert np.allclose(y, ys[lo:hi], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("overlap", [0, 1])
def test_resetup_after_value_change_parallel(comm, overlap: int) -> None:
    """New values, same pattern: G is refilled in place and equals a fresh factor."""
    A = laplacian_2d(12, kappa_seed=4)
    pcs = []
    for k in range(2):
        pc = PETSc.PC().create(comm=A.getComm())
        PETSc.Options()[f"rs{k}{overlap}_pc_fsai_overlap"] = overlap
        pc.setOptionsPrefix(f"rs{k}{overlap}_")
        pc.setType("python")
        pc.setPythonType("pcgcvae.FSAIPC")
        pc.setFromOptions()
        pcs.append(pc)
    pcs[0].setOperators(A)
    pcs[0].setUp()
    G_first = pcs[0].getPythonContext().G
    for k in range(3):  # the second setup keeps the structures' gathers, the third and fourth use them
        A.scale(2.0)
        A.shift(0.25 * (k + 1))
        pcs[0].setOperators(A)
        pcs[0].setUp()
        pcs[1].reset()  # a fresh factor of the same values
        pcs[1].setOperators(A)
        pcs[1].setUp()
        G0, G1 = pcs[0].getPythonContext().G, pcs[1].getPythonContext().G
        assert G0 is G_first
        diff = G0.copy()
        diff.axpy(-1.0, G1)
        assert diff.norm() < 1e-12 * G1.norm(), k


def test_overlap_with_new_matrix_of_other_pattern(comm) -> None:
    """The cached overlap/submatrix is not reused for another matrix with another pattern."""
    m = 10
    A = laplacian_2d(m, kappa_seed=5)
    B = laplacian_2d(m, kappa_seed=5)
    B.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    lo, hi = B.getOwnershipRange()
    for i in range(lo, hi):  # a weak extra coupling two rows away (still diagonally dominant)
        if i + 2 < m * m:
            B.setValue(i, i + 2, -0.01)
        if i - 2 >= 0:
            B.setValue(i, i - 2, -0.01)
    B.assemble()
    ksp = PETSc.KSP().create(comm=PETSc.COMM_WORLD)
    PETSc.Options()["nm_pc_fsai_overlap"] = 1
    ksp.setOptionsPrefix("nm_")
    ksp.getPC().setType("python")
    ksp.getPC().setPythonType("pcgcvae.FSAIPC")
    ksp.setFromOptions()
    ksp.setOperators(A)
    ksp.setUp()
    ksp.setOperators(B)
    ksp.setUp()
    fresh = cg_iterations(B, {**parallel_options("fsai", comm.size), "pc_fsai_overlap": 1})
    b = B.createVecLeft()
    b.setRandom()
    x = b.duplicate()
    ksp.setTolerances(rtol=1e-8)
    ksp.setType("cg")
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    assert abs(ksp.getIterationNumber() - fresh) <= 2


@pytest.mark.parametrize("overlap", [0, 1])
def test_nd_ordering_per_rank_is_one_global_order(comm, overlap: int) -> None:
    """Every rank orders its owned rows by nested dissection, halo rows keep their places:
    the parallel M equals the serial natural-order M of the matrix permuted to that global
    order (ranks in turn, each in its own order) -- exactly with overlap 1 at level 1."""
    from pcgcvae.ordering import local_permutation
    from pcgcvae.petsc_csr import mat_to_csr

    m = 11
    A = laplacian_2d(m, kappa_seed=5)
    As = laplacian_2d(m, comm=PETSc.COMM_SELF, kappa_seed=5)
    lo, hi = A.getOwnershipRange()
    local = lo + local_permutation(mat_to_csr(A.getDiagonalBlock()), "nd")
    gperm = np.concatenate(comm.allgather(local))
    iset = PETSc.IS().createGeneral(gperm.astype(PETSc.IntType), comm=PETSc.COMM_SELF)
    Ap = As.permute(iset, iset)
    opts = {"pc_fsai_overlap": overlap, "pc_fsai_ordering": "nd"}
    x = np.random.default_rng(0).standard_normal(m * m)
    y = apply_python_pc(A, x, **opts)
    ys = apply_python_pc(Ap, x[gperm], pc_fsai_ordering="natural")
    full = np.empty(m * m)
    full[gperm] = ys  # back to A's numbering
    if overlap:
        assert np.allclose(y, full[lo:hi], rtol=1e-12, atol=1e-14)
    its = cg_iterations(A, {**parallel_options("fsai", comm.size), **opts})
    assert its < cg_iterations(A, {"pc_type": "jacobi"})



@pytest.mark.parametrize("overlap", [0, 1])
@pytest.mark.parametrize("pc_class", ["FSAIPC", "GCVAEPC"])
def test_same_values_keep_the_factor_on_every_rank_or_none(comm, tiny_poisson, pc_class: str, overlap: int) -> None:
    """Assembled again with the same values, every rank keeps its factor; one value changed on rank 0
    alone, every rank builds again (the decision is collective), and G equals a fresh factor."""
    kept = "the factor itself (same operator values and options)"
    stem = "pc_gcvae_" if pc_class == "GCVAEPC" else "pc_fsai_"
    opts = {stem + "overlap": overlap, **({"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {})}
    A = laplacian_2d(12, kappa_seed=5)
    pcs = []
    for k in range(2):
        prefix = f"sv{k}{overlap}{pc_class}_"
        for name, value in opts.items():
            PETSc.Options()[prefix + name] = value
        pc = PETSc.PC().create(comm=A.getComm())
        pc.setOptionsPrefix(prefix)
        pc.setType("python")
        pc.setPythonType(f"pcgcvae.{pc_class}")
        pc.setFromOptions()
        pcs.append(pc)
    pc = pcs[0]
    pc.setOperators(A)
    pc.setUp()
    ctx = pc.getPythonContext()
    G = ctx.G
    lo, _ = A.getOwnershipRange()
    A.setValue(lo, lo, A.getValue(lo, lo))
    A.assemble()
    pc.setUp()
    assert ctx.stats["reused"] == [kept] and ctx.G is G
    if A.getComm().getRank() == 0:  # a symmetric pair inside rank 0's rows
        v = A.getValue(lo, lo + 1)
        A.setValue(lo, lo + 1, 2.0 * v)
        A.setValue(lo + 1, lo, 2.0 * v)
    A.assemble()
    pc.setUp()
    assert kept not in ctx.stats["reused"] and "G's structure" in ctx.stats["reused"]
    pcs[1].setOperators(A)
    pcs[1].setUp()
    diff = ctx.G.copy()
    diff.axpy(-1.0, pcs[1].getPythonContext().G)
    assert diff.norm() < 1e-12 * ctx.G.norm()
