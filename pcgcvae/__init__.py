"""pcgcvae: a learned sparse approximate inverse preconditioner for PETSc.

Use it from PETSc with::

    -ksp_type cg -pc_type python -pc_python_type pcgcvae.GCVAEPC

or ``pcgcvae.FSAIPC`` for the classical FSAI reference.  Importing the package
does not import PETSc: the model and training code need only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .pc import FSAIPC, GCVAEPC

__all__ = ["FSAIPC", "GCVAEPC", "__version__"]


def __getattr__(name: str):  # noqa: ANN202
    if name in ("GCVAEPC", "FSAIPC"):
        from . import pc

        return getattr(pc, name)
    raise AttributeError(f"module 'pcgcvae' has no attribute {name!r}")
