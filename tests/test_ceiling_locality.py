"""The locality diagnostic of the per-matrix optimum (scripts/ceiling_locality.py): its ratio parametrisation
gives back a normalised factor, its distance to the boundary is the grid's, and its features have one row per
pattern entry."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers import laplacian_2d
from petsc4py import PETSc

from pcgcvae.fsai import fsai_values
from pcgcvae.petsc_csr import mat_to_csr
from pcgcvae.training import ceiling

M = 14


@pytest.fixture(scope="module")
def locality():
    spec = importlib.util.spec_from_file_location(
        "ceiling_locality", Path(__file__).resolve().parents[1] / "scripts" / "ceiling_locality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def op():
    A = laplacian_2d(M, comm=PETSc.COMM_SELF, kappa_seed=5)
    yield ceiling.local_operator(mat_to_csr(A), "nd", 1)
    A.destroy()


def test_ratios_give_back_fsai_and_scale_free(locality, op):
    fsai = fsai_values(op.ahat, op.s)
    ratio, off = locality.row_ratios(op.s, fsai)
    assert np.allclose(ratio[~off], 1.0) and off.sum() == op.s.nnz - op.s.n
    assert np.allclose(locality.factor_from_ratios(op, ratio), fsai, rtol=1e-12, atol=1e-14)
    rows = np.repeat(np.arange(op.s.n), np.diff(op.s.indptr))
    scaled = fsai * np.linspace(0.5, 2.0, op.s.n)[rows]  # another scale per row, the same ratios
    assert np.allclose(locality.row_ratios(op.s, scaled)[0], ratio)


def test_boundary_distance_is_the_grids(locality, op):
    d = locality.boundary_distance(op.a)
    i, j = np.divmod(op.perm, M)  # row k of op.a is grid node perm[k]
    expected = np.minimum(np.minimum(i, j), np.minimum(M - 1 - i, M - 1 - j))
    assert np.array_equal(d, np.minimum(expected, locality.BOUNDARY_CAP))


@pytest.mark.parametrize("kind, columns", [("local", 24), ("local2", 300), ("+2hop", 318), ("+boundary", 318),
                                           ("+mode", 304)])
def test_features_one_row_per_entry(locality, op, kind, columns):
    ratio, _ = locality.row_ratios(op.s, fsai_values(op.ahat, op.s))
    x = locality.features(op, ratio, kind, level=1)
    assert x.shape == (op.s.nnz, columns) and np.all(np.isfinite(x))
