"""Export trained GCVAE checkpoints (``.pt``, torch) to the torch-free run-time format (``.npz``).

::

    python -m pcgcvae.training.export                       # every shipped model in pcgcvae/models
    python -m pcgcvae.training.export my_model.pt poisson   # a checkpoint file, a shipped name

Each ``X.pt`` becomes ``X.npz`` next to it (``--out DIR``: in DIR instead): the prior and
decoder weights (float32; the encoder is needed for training only) and a JSON header
with the format tag and version, the package version, the architecture and the
checkpoint's full metadata (family, block sizes, pattern levels, ordering, held-out
metrics, ...).  :func:`pcgcvae.inference.load_inference_model` reads it with NumPy only.
Exporting needs torch (``pip install pcgcvae[train]``).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..inference import inference_weight_shapes, make_header, save_inference_model
from ..models_registry import SHIPPED_MODELS, resolve_model
from .checkpoint import load_checkpoint


def checkpoint_to_numpy(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The inference weights of a ``.pt`` checkpoint as float32 arrays, and the header of its export."""
    path = Path(path)
    model, info = load_checkpoint(path)
    arch = {k: v for k, v in info["architecture"].items() if k != "class"}
    state = model.state_dict()
    weights = {k: state[k].detach().cpu().numpy().astype(np.float32) for k in inference_weight_shapes(arch)}
    source = {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": info.get("format"),
        "format_version": info.get("format_version"),
        "package_version": info.get("package_version"),
    }
    return weights, make_header(arch, info["meta"], source)


def export(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the ``.npz`` export of the checkpoint ``path`` (default: next to it); returns its path."""
    path = Path(path)
    weights, header = checkpoint_to_numpy(path)
    target = Path(out) if out is not None else path.with_suffix(".npz")
    save_inference_model(target, weights, header)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="checkpoint files or shipped model names (default: every shipped "
                        f"model: {', '.join(SHIPPED_MODELS)})")
    parser.add_argument("--out", type=Path, help="directory to write the .npz files in (default: next to each .pt)")
    args = parser.parse_args(argv)
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"--out {args.out} is not a directory")
        args.out.mkdir(parents=True, exist_ok=True)
    for item in args.models or SHIPPED_MODELS:
        src = resolve_model(item, (".pt",))
        target = export(src, None if args.out is None else args.out / src.with_suffix(".npz").name)
        print(f"{src} -> {target} ({target.stat().st_size / 1024:.1f} kB)")


if __name__ == "__main__":
    main()
