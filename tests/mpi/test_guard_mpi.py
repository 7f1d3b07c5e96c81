"""The guard and the symmetry check under MPI: one decision for all ranks, errors on every rank."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import error_text, laplacian_2d, python_ksp
from petsc4py import PETSc


def _setup(A: PETSc.Mat, pc_class: str = "GCVAEPC", **options):
    ksp = python_ksp(A, pc_class, **options)
    ksp.setUp()
    return ksp.getPC().getPythonContext()


@pytest.mark.parametrize("threshold", [0.0, 1e9])
@pytest.mark.parametrize("overlap", [0, 1])
def test_guard_decides_once_for_every_rank(comm, tiny_poisson, threshold: float, overlap: int) -> None:
    A = laplacian_2d(40, kappa_seed=6)
    ctx = _setup(A, pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_threshold=threshold,
                 pc_gcvae_overlap=overlap, pc_gcvae_guard_fraction=1.0, pc_gcvae_guard_steps=0)
    guard = ctx.stats["guard"]
    everyone = comm.allgather((guard["estimate"], guard["fired"], guard["rows"]))
    assert all(e == everyone[0] for e in everyone)
    assert guard["fired"] == (threshold == 0.0)
    assert guard["of"] == 1600 and guard["rows"] == 1600  # fraction 1: every row sampled
    fsai = _setup(A, "FSAIPC", pc_fsai_ordering="nd", pc_fsai_overlap=overlap)
    if not guard["fired"]:  # with every row sampled: exactly the difference of the two Kaporin scores
        assert guard["estimate"] == pytest.approx(ctx.stats["kaporin"] - fsai.stats["kaporin"], rel=1e-9)
    else:  # FSAI's factor on every rank
        diff = ctx.G.copy()
        diff.axpy(-1.0, fsai.G)
        assert diff.norm() < 1e-12 * fsai.G.norm()


@pytest.mark.parametrize("where", ["diagonal block", "between ranks"])
def test_asymmetry_on_one_rank_is_an_error_on_every_rank(comm, tiny_poisson, where: str) -> None:
    """One entry halved on the last rank -- inside its diagonal block, or in a coupling to the
    previous rank's rows (the off-diagonal block) -- is the same error on every rank, naming the
    entry's global row and column; -pc_*_check_symmetry false lets the setup through."""
    m = 12
    A = laplacian_2d(m)
    lo, hi = A.getOwnershipRange()
    row, col = (hi - 1, hi - 2) if where == "diagonal block" else (lo, lo - m)
    if comm.rank == comm.size - 1:
        assert col >= 0 and (col < lo) == (where == "between ranks")
        A.setValue(row, col, 0.5 * A.getValue(row, col))
    A.assemble()
    row, col = comm.bcast((row, col), root=comm.size - 1)
    for pc_class, opts in (("FSAIPC", {}), ("GCVAEPC", {"pc_gcvae_model": str(tiny_poisson)})):
        ksp = python_ksp(A, pc_class, **opts)
        with pytest.raises(PETSc.Error) as info:
            ksp.setUp()
        text = error_text(info.value)
        assert "not symmetric" in text, text
        assert f"row {row}, column {col}" in text or f"row {col}, column {row}" in text, text
        assert ksp.getPC().getPythonContext().G is None
        message = text[text.index("not symmetric"):].split("\n")[0]
        assert all(t == message for t in comm.allgather(message))
        stem = "pc_gcvae_" if pc_class == "GCVAEPC" else "pc_fsai_"
        ksp = python_ksp(A, pc_class, **opts, **{stem + "check_symmetry": "false"})
        ksp.setUp()
        assert ksp.getPC().getPythonContext().G is not None


def test_replaced_operator_of_another_size_under_mpi(comm, tiny_poisson) -> None:
    ksp = python_ksp(laplacian_2d(9, kappa_seed=1), "GCVAEPC", pc_gcvae_model=str(tiny_poisson),
                     pc_gcvae_overlap=1)
    for m in (9, 14, 9):
        A = laplacian_2d(m, kappa_seed=m)
        fresh = python_ksp(A, "GCVAEPC", pc_gcvae_model=str(tiny_poisson), pc_gcvae_overlap=1)
        its = []
        for k in (ksp, fresh):
            b = A.createVecLeft()
            b.set(1.0)
            x = b.duplicate()
            if k is ksp:
                k.reset()  # PETSc's rule for a new size: reset, then the new operators
            k.setOperators(A)
            k.solve(b, x)
            assert k.getConvergedReason() > 0
            its.append(k.getIterationNumber())
        assert its[0] == its[1], (m, its)
        assert ksp.getPC().getPythonContext().G.getSize() == (m * m, m * m)
    assert np.isfinite(ksp.getPC().getPythonContext().stats["kaporin"])


def test_guard_decision_cache_is_collective(comm, tiny_poisson) -> None:
    """New values on the same structure: every rank reuses the decision; -pc_gcvae_guard_recheck: none."""
    A = laplacian_2d(24, kappa_seed=3)
    for recheck in ("false", "true"):
        ksp = python_ksp(A.copy(), "GCVAEPC", pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_recheck=recheck)
        ksp.setUp()
        ksp.getOperators()[0].scale(2.0)
        ksp.setUp()
        ctx = ksp.getPC().getPythonContext()
        assert comm.allgather(ctx.stats["guard"]["reused"]) == [recheck == "false"] * comm.size


@pytest.mark.parametrize("overlap,full_rows,full_iterations", [(0, 0, 0), (1, 0, 0), (0, 5000, 0), (1, 5000, 0),
                                                                (0, 0, 1000), (1, 0, 1000)])
def test_short_cg_check_decides_once_for_every_rank(comm, tiny_poisson, overlap: int, full_rows: int,
                                                    full_iterations: int) -> None:
    """The spectral check (short CG with each candidate, or whole solves: on this small problem, or where
    FSAI's short run extrapolates to a short solve) gives every rank the same trials and decision."""
    A = laplacian_2d(36, kappa_seed=8)
    ctx = _setup(A, pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_threshold=1e9, pc_gcvae_overlap=overlap,
                 pc_gcvae_guard_alphas="0.5,1", pc_gcvae_guard_steps=10, pc_gcvae_guard_full_rows=full_rows,
                 pc_gcvae_guard_full_iterations=full_iterations)
    guard = ctx.stats["guard"]
    signal = "whole CG solves" if full_rows or full_iterations else "short CG"
    assert guard["signal"] == signal and set(guard["trials"]) == {0.0, 0.5, 1.0}
    assert guard.get("full_reason") == ("rows" if full_rows else "iterations" if full_iterations else None)
    mine = (guard["alpha"], sorted((a, t["ratio"], t["reduction"]) for a, t in guard["trials"].items()))
    assert all(m == mine for m in comm.allgather(mine))
    if guard["alpha"] == 0.0:
        fsai = _setup(A, "FSAIPC", pc_fsai_ordering="nd", pc_fsai_overlap=overlap)
        diff = ctx.G.copy()
        diff.axpy(-1.0, fsai.G)
        assert diff.norm() < 1e-12 * fsai.G.norm()


def test_near_nullspace_start_is_the_serial_one_and_decides_once(comm, tiny_poisson) -> None:
    """``-pc_gcvae_guard_start near-nullspace`` under MPI: x* (a combination of the near-nullspace vectors)
    is the serial one whatever the layout, and the short runs from it give every rank the same prediction
    and decision."""
    from pcgcvae.trial import modes_solution

    A = laplacian_2d(30, kappa_seed=4)
    rng = np.random.default_rng(3)
    field = rng.standard_normal(A.getSize()[0])
    field /= np.linalg.norm(field)  # a unit vector, as PETSc asks of a null space's vectors
    v = A.createVecRight()
    lo, hi = v.getOwnershipRange()
    v.array[:] = field[lo:hi]
    A.setNearNullSpace(PETSc.NullSpace().create(vectors=[v], comm=comm))
    x = modes_solution(A, seed=9, start="near-nullspace")
    whole = np.concatenate(comm.allgather(x.array.copy()))
    serial = laplacian_2d(30, comm=PETSc.COMM_SELF, kappa_seed=4)
    w = serial.createVecRight()
    w.array[:] = field
    serial.setNearNullSpace(PETSc.NullSpace().create(vectors=[w], comm=PETSc.COMM_SELF))
    assert np.allclose(whole, modes_solution(serial, seed=9, start="near-nullspace").array, rtol=1e-12, atol=0)
    ctx = _setup(A, pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_threshold=1e9, pc_gcvae_guard_full_rows=0,
                 pc_gcvae_guard_steps=8, pc_gcvae_guard_start="near-nullspace")
    guard = ctx.stats["guard"]
    assert guard["start"] == "near-nullspace"
    mine = (guard["alpha"], round(guard["trials"][1.0]["ratio"], 12))
    assert all(t == mine for t in comm.allgather(mine))
