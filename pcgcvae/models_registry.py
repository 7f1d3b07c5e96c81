"""The models shipped with the package, and which one serves which operator (no torch here).

A shipped model exists in two files in ``pcgcvae/models``: ``NAME.pt`` (the torch
checkpoint, for training, fine-tuning and evaluation) and ``NAME.npz`` (the same
prior and decoder weights for the torch-free run time, written by
``python -m pcgcvae.training.export``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError

MODEL_DIR = Path(__file__).parent / "models"
SHIPPED_MODELS = ("poisson", "poisson-smoother", "elasticity")
ROLES = ("krylov", "smoother")


def default_model_name(block_size: int, role: str = "krylov") -> str:
    """The shipped model that serves operators of this block size in this role.

    ``krylov`` (the preconditioner of CG): ``poisson`` (fine-tuned on the condition number) for scalar
    operators, ``elasticity`` for vector ones.  ``smoother`` (inside multigrid): ``poisson-smoother``
    (trained on the Kaporin number alone, which keeps diag(GAGᵀ) = 1 like FSAI and damps the
    high-frequency end better) for scalar operators, ``elasticity`` (the CG-tuned model: no vector model is
    trained for smoothing) for vector ones.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role '{role}' ({', '.join(ROLES)})")
    if block_size == 1:
        return "poisson" if role == "krylov" else "poisson-smoother"
    return "elasticity"


def shipped_model_path(name: str, suffix: str = ".pt") -> Path:
    """Path of a model shipped with the package (it may not exist): the torch checkpoint
    (``suffix=".pt"``) or the torch-free export (``".npz"``)."""
    return MODEL_DIR / f"{name}{suffix}"


def resolve_model(name_or_path: str, suffixes: tuple[str, ...] = (".pt",)) -> Path:
    """A shipped model name (``poisson``, ``poisson-smoother``, ``elasticity``) or a file path.

    A shipped name resolves to the first of ``NAME + suffix`` (in the order of ``suffixes``)
    that is installed."""
    if name_or_path in SHIPPED_MODELS:
        for suffix in suffixes:
            path = shipped_model_path(name_or_path, suffix)
            if path.is_file():
                return path
        missing = " and ".join(str(shipped_model_path(name_or_path, s)) for s in suffixes)
        raise CheckpointError(
            f"the shipped model '{name_or_path}' is not installed ({missing} missing); "
            "train it with 'python -m pcgcvae.training.train' or give a checkpoint path"
        )
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_file():
        raise CheckpointError(
            f"no GCVAE checkpoint at '{name_or_path}': not a file, and not one of the "
            f"shipped models {', '.join(SHIPPED_MODELS)}"
        )
    return path
