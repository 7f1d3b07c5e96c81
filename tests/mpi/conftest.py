"""The tests in this directory run under mpiexec (2 and 3 ranks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
import firedrake  # noqa: F401  (first, so that it initialises PETSc)
import pytest
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).parent.parent))


def pytest_configure(config) -> None:
    if MPI.COMM_WORLD.size < 2:
        raise pytest.UsageError("tests/mpi must run under mpiexec with at least 2 ranks (see scripts/run_tests.sh)")


@pytest.fixture(scope="session")
def comm():
    return MPI.COMM_WORLD


def _tiny_model(comm, family: str) -> Path:
    """Train a tiny model on rank 0 (or reuse the serial run's), share its path with every rank."""
    from helpers import shared_tmpdir, train_tiny_model

    out = shared_tmpdir(comm)
    path = str(train_tiny_model(family, out)) if comm.rank == 0 else None
    return Path(comm.bcast(path, root=0))


@pytest.fixture(scope="session")
def tiny_poisson(comm) -> Path:
    return _tiny_model(comm, "poisson")


@pytest.fixture(scope="session")
def tiny_elasticity(comm) -> Path:
    return _tiny_model(comm, "elasticity")
