"""The per-matrix optimum on a fixed pattern (pcgcvae.training.ceiling): it starts from FSAI, lowers
the condition number, and its CG harness counts what the preconditioner's own solve counts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import cg_iterations, laplacian_2d
from petsc4py import PETSc

from pcgcvae.fsai import fsai_values
from pcgcvae.petsc_csr import mat_to_csr
from pcgcvae.training import ceiling


@pytest.fixture(scope="module")
def problem():
    A = laplacian_2d(14, comm=PETSc.COMM_SELF, kappa_seed=3)
    yield A, ceiling.local_operator(mat_to_csr(A), "nd", 1)
    A.destroy()


def test_harness_counts_fsai_iterations_as_the_pc_does(problem):
    A, op = problem
    assert ceiling.cg_iterations(op, fsai_values(op.ahat, op.s)) == cg_iterations(
        A, {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC", "pc_fsai_ordering": "nd"})


def test_optimisation_lowers_the_condition_number_from_fsai(problem):
    _, op = problem
    fsai = fsai_values(op.ahat, op.s)
    best, history = ceiling.optimise(ceiling.condition_objective(op), fsai, steps=30, lr=5e-3)
    assert history[0] == pytest.approx(ceiling.log_condition(op, fsai), rel=1e-10)
    assert min(history) < history[0] - 0.01  # the condition number falls by more than 1 %
    assert ceiling.log_condition(op, best) == pytest.approx(min(history), rel=1e-10)
    assert best.shape == fsai.shape and not np.array_equal(best, fsai)
    assert ceiling.cg_iterations(op, best) <= ceiling.cg_iterations(op, fsai)


def test_saved_factors_give_back_the_operator_and_the_values(problem, tmp_path):
    _, op = problem
    fsai = fsai_values(op.ahat, op.s)
    other = 1.01 * fsai
    path = ceiling.save_factors_npz(tmp_path / "p.npz", op, {"fsai": fsai, "optimised": other})
    back, values = ceiling.load_factors_npz(path)
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(back.a, name), getattr(op.a, name))
        assert np.array_equal(getattr(back.ahat, name), getattr(op.ahat, name))
    assert np.array_equal(back.s.indptr, op.s.indptr) and np.array_equal(back.s.indices, op.s.indices)
    assert np.array_equal(back.dinv, op.dinv) and np.array_equal(back.perm, op.perm)
    assert sorted(values) == ["fsai", "optimised"]
    assert np.array_equal(values["optimised"], other)
    assert ceiling.cg_iterations(back, values["fsai"]) == ceiling.cg_iterations(op, fsai)
