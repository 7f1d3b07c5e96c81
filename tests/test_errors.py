"""Bad input gets a clear PETSc error naming the problem, and the KSP stays usable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import error_text, laplacian_2d
from helpers import python_ksp as make_ksp
from petsc4py import PETSc

from pcgcvae.training.checkpoint import save_checkpoint
from pcgcvae.training.model import GCVAE, GCVAEConfig


def assert_usable_after(ksp: PETSc.KSP) -> None:
    """The same KSP solves once it gets a good operator."""
    A = laplacian_2d(8, comm=ksp.getComm())
    ksp.setOperators(A)
    b = A.createVecLeft()
    b.set(1.0)
    x = b.duplicate()
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0


def expect(ksp: PETSc.KSP, needle: str, good_model=None) -> None:
    """setUp fails with ``needle`` in the message; after fixing the input
    (a good operator, and ``good_model`` for model errors) the same KSP solves."""
    with pytest.raises(PETSc.Error) as info:
        ksp.setUp()
    assert needle in error_text(info.value), error_text(info.value)
    assert ksp.getPC().getPythonContext().G is None  # nothing half-built
    if good_model is not None:
        ksp.getPC().getPythonContext().model_name = str(good_model)
        ksp.getPC().getPythonContext().pattern_level = 1
    assert_usable_after(ksp)


@pytest.mark.parametrize("cls", ["FSAIPC", "GCVAEPC"])
def test_non_square(cls: str, tiny_poisson) -> None:
    A = PETSc.Mat().createAIJ(size=(6, 5), nnz=1, comm=PETSc.COMM_SELF)
    for i in range(5):
        A.setValue(i, i, 1.0)
    A.assemble()
    expect(make_ksp(A, cls, pc_gcvae_model=str(tiny_poisson)), "square")


def test_unassembled() -> None:
    A = PETSc.Mat().createAIJ(size=(4, 4), nnz=1, comm=PETSc.COMM_SELF)
    A.setValue(0, 0, 1.0)  # never assembled
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.getPC().setType("python")
    ksp.getPC().setPythonType("pcgcvae.FSAIPC")
    ksp.setOperators(A)
    with pytest.raises(PETSc.Error) as info:
        ksp.setUp()
    assert "assembled" in error_text(info.value).lower()


@pytest.mark.parametrize("cls", ["FSAIPC", "GCVAEPC"])
@pytest.mark.parametrize("value,needle", [(-1.0, "non-positive diagonal"), (0.0, "non-positive diagonal"),
                                          (np.nan, "non-finite"), (np.inf, "non-finite")])
def test_bad_diagonal(cls: str, value: float, needle: str, tiny_poisson) -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    A.setValue(7, 7, value)
    A.assemble()
    expect(make_ksp(A, cls, pc_gcvae_model=str(tiny_poisson)), needle)


def test_row_without_entries() -> None:
    A = PETSc.Mat().createAIJ(size=(5, 5), nnz=1, comm=PETSc.COMM_SELF)
    for i in (0, 1, 3, 4):
        A.setValue(i, i, 2.0)
    A.assemble()
    expect(make_ksp(A), "A[2,2] = 0.0 (the row has no stored entries)")


def test_empty_operator() -> None:
    A = PETSc.Mat().createAIJ(size=(0, 0), nnz=1, comm=PETSc.COMM_SELF)
    A.assemble()
    expect(make_ksp(A), "empty")


def test_nan_off_diagonal_entry() -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    A.setValue(7, 8, np.nan)
    A.assemble()
    expect(make_ksp(A), "non-finite entry nan at row 7, column 8")


def test_indefinite_operator_fsai() -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    A.setValue(7, 8, -50.0)
    A.setValue(8, 7, -50.0)
    A.assemble()
    expect(make_ksp(A), "not SPD")


def test_missing_checkpoint(tmp_path, tiny_poisson) -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    expect(make_ksp(A, "GCVAEPC", pc_gcvae_model=str(tmp_path / "nope.pt")), "no GCVAE checkpoint",
           good_model=tiny_poisson)


def test_corrupt_checkpoint(tmp_path, tiny_poisson) -> None:
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    expect(make_ksp(laplacian_2d(6, comm=PETSc.COMM_SELF), "GCVAEPC", pc_gcvae_model=str(bad)), "corrupt",
           good_model=tiny_poisson)


def test_truncated_checkpoint(tmp_path, tiny_poisson) -> None:
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(tiny_poisson.read_bytes()[:2000])
    expect(make_ksp(laplacian_2d(6, comm=PETSc.COMM_SELF), "GCVAEPC", pc_gcvae_model=str(bad)), "corrupt",
           good_model=tiny_poisson)


def test_foreign_checkpoint(tmp_path, tiny_poisson) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    expect(make_ksp(laplacian_2d(6, comm=PETSc.COMM_SELF), "GCVAEPC", pc_gcvae_model=str(foreign)), "foreign",
           good_model=tiny_poisson)


def _laplacian_with_block_size_2() -> PETSc.Mat:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)  # 36 rows: block size 2 is valid
    B = PETSc.Mat().createAIJ(size=A.getSize(), bsize=2, comm=PETSc.COMM_SELF)
    B.setPreallocationNNZ(6)
    indptr, indices, data = A.getValuesCSR()
    for i in range(A.getSize()[0]):
        B.setValues(i, indices[indptr[i]:indptr[i + 1]], data[indptr[i]:indptr[i + 1]])
    B.assemble()
    return B


def test_wrong_block_size(tmp_path, tiny_poisson) -> None:
    expect(make_ksp(_laplacian_with_block_size_2(), "GCVAEPC", pc_gcvae_model=str(tiny_poisson)), "block size")


def test_block_size_fallback_to_fsai(tmp_path, tiny_poisson) -> None:
    """With -pc_gcvae_fallback fsai, an operator of another block size gets exactly FSAI, and view says so."""
    B = _laplacian_with_block_size_2()
    its = {}
    for cls, opts in (("GCVAEPC", {"pc_gcvae_model": str(tiny_poisson), "pc_gcvae_fallback": "fsai"}),
                      ("FSAIPC", {})):
        ksp = make_ksp(B, cls, **opts)
        b = B.createVecLeft()
        b.setArray(np.linspace(1.0, 2.0, b.getSize()))
        x = b.duplicate()
        ksp.solve(b, x)
        assert ksp.getConvergedReason() > 0
        its[cls] = ksp.getIterationNumber()
        if cls == "GCVAEPC":
            view = str(tmp_path / "view.txt")
            viewer = PETSc.Viewer().createASCII(view, comm=PETSc.COMM_SELF)
            ksp.view(viewer)
            viewer.destroy()
            with open(view) as f:
                assert "FALLBACK: classical FSAI" in f.read()
    assert its["GCVAEPC"] == its["FSAIPC"]


def test_model_without_requested_level(tmp_path, tiny_poisson) -> None:
    path = tmp_path / "level1.pt"
    meta = {"family": "poisson", "block_sizes": [1], "pattern_levels": [1]}
    save_checkpoint(path, GCVAE(GCVAEConfig(hidden=8)), meta)
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    expect(make_ksp(A, "GCVAEPC", pc_gcvae_model=str(path), pc_gcvae_pattern_level=2), "pattern levels",
           good_model=tiny_poisson)


def test_complex_scalar_build_is_refused(monkeypatch) -> None:
    from pcgcvae import pc as pcmod

    monkeypatch.setattr(pcmod.PETSc, "ScalarType", np.complex128)
    with pytest.raises(Exception, match="real-scalar PETSc build"):
        pcmod._require_real_scalars()


def test_unsupported_matrix_type() -> None:
    A = laplacian_2d(5, comm=PETSc.COMM_SELF)
    D = A.convert("dense")
    expect(make_ksp(D), "AIJ")
