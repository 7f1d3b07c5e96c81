"""Saving, finding and loading trained GCVAE checkpoints.

A checkpoint is a ``torch.save`` dictionary with plain metadata (format tag
and version, package version, architecture, training family, supported block
sizes and pattern levels, training settings, held-out metrics) and the
model's ``state_dict``.  Loading needs only torch and torch_geometric and
refuses anything it cannot trust, with a message that says why.  The run time
reads the torch-free export of a checkpoint instead (:mod:`pcgcvae.training.export`,
:mod:`pcgcvae.inference`); the shipped-model names live in the torch-free
:mod:`pcgcvae.models_registry` and are re-exported here.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import CheckpointError
from ..models_registry import MODEL_DIR, ROLES, SHIPPED_MODELS, default_model_name, shipped_model_path
from ..models_registry import resolve_model as _resolve
from .model import GCVAE, GCVAEConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_DIR",
    "REQUIRED_META",
    "ROLES",
    "SHIPPED_MODELS",
    "default_model_name",
    "load_checkpoint",
    "load_model",
    "resolve_model",
    "save_checkpoint",
    "shipped_model_path",
]

FORMAT = "pcgcvae-gcvae-checkpoint"
FORMAT_VERSION = 1
REQUIRED_META = ("family", "block_sizes", "pattern_levels")


def resolve_model(name_or_path: str) -> Path:
    """A shipped model name (``poisson``, ``elasticity``) or a file path (a shipped name: its ``.pt``)."""
    return _resolve(name_or_path, (".pt",))


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
