"""Saving, finding and loading trained GCVAE checkpoints.

A checkpoint is a ``torch.save`` dictionary with plain metadata (format tag
and version, package version, architecture, training family, supported block
sizes and pattern levels, training settings, held-out metrics) and the
model's ``state_dict``.  Loading needs only torch and torch_geometric and
refuses anything it cannot trust, with a message that says why.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import CheckpointError
from .model import GCVAE, GCVAEConfig

FORMAT = "pcgcvae-gcvae-checkpoint"
FORMAT_VERSION = 1
MODEL_DIR = Path(__file__).parent / "models"
SHIPPED_MODELS = ("poisson", "poisson-smoother", "elasticity")
ROLES = ("krylov", "smoother")
REQUIRED_META = ("family", "block_sizes", "pattern_levels")


def default_model_name(block_size: int, role: str = "krylov") -> str:
    """The shipped model that serves operators of this block size in this role.

    ``krylov`` (the preconditioner of CG): ``poisson`` (fine-tuned on the condition number) for scalar
    operators, ``elasticity`` for vector ones.  ``smoother`` (inside multigrid): ``poisson-smoother``
    (trained on the Kaporin number alone, which keeps diag(GAGᵀ) = 1 like FSAI and damps the
    high-frequency end better) for scalar operators, ``elasticity`` (Kaporin-trained) for vector ones.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role '{role}' ({', '.join(ROLES)})")
    if block_size == 1:
        return "poisson" if role == "krylov" else "poisson-smoother"
    return "elasticity"


def shipped_model_path(name: str) -> Path:
    """Path of a model shipped with the package (it may not exist)."""
    return MODEL_DIR / f"{name}.pt"


def resolve_model(name_or_path: str) -> Path:
    """A shipped model name (``poisson``, ``elasticity``) or a file path."""
    if name_or_path in SHIPPED_MODELS:
        path = shipped_model_path(name_or_path)
        if not path.is_file():
            raise CheckpointError(
                f"the shipped model '{name_or_path}' is not installed ({path} is missing); "
                "train it with 'python -m pcgcvae.train' or give a checkpoint path"
            )
        return path
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_file():
        raise CheckpointError(
            f"no GCVAE checkpoint at '{name_or_path}': not a file, and not one of the "
            f"shipped models {', '.join(SHIPPED_MODELS)}"
        )
    return path


def save_checkpoint(path: str | os.PathLike, model: GCVAE, meta: dict[str, Any]) -> None:
    """Write ``model`` and its metadata; ``meta`` must name family, block sizes and levels."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}")
    meta = _plain(meta)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "architecture": {"class": "GCVAE", **model.config.to_dict()},
        "meta": dict(meta),
        "state_dict": {k: v.detach().clone().cpu() for k, v in model.state_dict().items()},
    }
    tmp = Path(f"{path}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _plain(obj: Any) -> Any:
    """Metadata as plain Python types (NumPy scalars would make the file unloadable
    with ``weights_only=True``)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # NumPy/torch scalar
        return obj.item()
    return obj


def _read(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read GCVAE checkpoint '{path}': corrupt or not a torch file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a pcgcvae GCVAE checkpoint (foreign file)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has checkpoint format version {payload.get('format_version')}, this pcgcvae "
            f"{__version__} reads version {FORMAT_VERSION}; retrain or use a matching pcgcvae"
        )
    return payload


def load_checkpoint(path: str | os.PathLike) -> tuple[GCVAE, dict[str, Any]]:
    """Load a checkpoint file; returns the model (eval mode) and its full metadata."""
    path = Path(path)
    payload = _read(path)
    arch = dict(payload.get("architecture", {}))
    if arch.pop("class", None) != "GCVAE":
        raise CheckpointError(f"'{path}' holds an unknown architecture {payload.get('architecture')}")
    try:
        config = GCVAEConfig(**arch)
    except TypeError as exc:
        raise CheckpointError(f"'{path}' has an architecture this pcgcvae cannot build: {exc}") from exc
    model = GCVAE(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"'{path}': weights do not match the recorded architecture: {exc}") from exc
    meta = payload.get("meta", {})
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"'{path}' lacks metadata {missing}")
    model.eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, info


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple[GCVAE, dict[str, Any]]:
    return load_checkpoint(path)


def load_model(name_or_path: str) -> tuple[GCVAE, dict[str, Any]]:
    """Resolve and load a model, caching it per file version (one load per process)."""
    path = resolve_model(name_or_path)
    st = path.stat()
    return _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
