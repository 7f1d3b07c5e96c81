"""Fixtures shared by the serial tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
import firedrake  # noqa: F401  (first, so that it initialises PETSc)
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_poisson(tmp_path_factory) -> Path:
    """A small Poisson GCVAE trained in the test session (not a stub)."""
    from helpers import train_tiny_model

    return train_tiny_model("poisson", tmp_path_factory.mktemp("tiny_poisson"))


@pytest.fixture(scope="session")
def tiny_elasticity(tmp_path_factory) -> Path:
    """A small elasticity GCVAE (block sizes 2 and 3) trained in the test session."""
    from helpers import train_tiny_model

    return train_tiny_model("elasticity", tmp_path_factory.mktemp("tiny_elasticity"))
