"""Shared test helpers: small PETSc matrices and tiny GCVAE models trained in-test."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import numpy as np
from petsc4py import PETSc


def laplacian_2d(m: int, comm=PETSc.COMM_WORLD, kappa_seed: int | None = None) -> PETSc.Mat:
    """5-point Laplacian on an m x m grid (Dirichlet), optionally with random log-normal cell coefficients."""
    n = m * m
    A = PETSc.Mat().createAIJ(size=(n, n), nnz=5, comm=comm)
    rng = np.random.default_rng(kappa_seed) if kappa_seed is not None else None
    kap = np.exp(1.5 * rng.standard_normal((m + 1, m + 1))) if rng is not None else np.ones((m + 1, m + 1))
    lo, hi = A.getOwnershipRange()
    for row in range(lo, hi):
        i, j = divmod(row, m)
        diag = 0.0
        for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            w = 2.0 / (1.0 / kap[i + max(di, 0), j + max(dj, 0)] + 1.0 / kap[i + 1 + min(di, 0), j + 1 + min(dj, 0)])
            diag += w
            ii, jj = i + di, j + dj
            if 0 <= ii < m and 0 <= jj < m:
                A.setValue(row, ii * m + jj, -w)
        A.setValue(row, row, diag)
    A.assemble()
    return A


_PREFIXES = itertools.count()  # the same sequence on every rank


def python_ksp(A: PETSc.Mat, pc_class: str = "FSAIPC", **options) -> PETSc.KSP:
    """CG with ``pcgcvae.<pc_class>`` on ``A``, ``options`` set under a fresh prefix (not yet set up)."""
    prefix = f"t{next(_PREFIXES)}_"  # never reused: options left behind by a failed setup stay unseen
    opts = PETSc.Options()
    for k, v in options.items():
        opts[prefix + k] = v
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setType("cg")
    ksp.getPC().setType("python")
    ksp.getPC().setPythonType(f"pcgcvae.{pc_class}")
    ksp.setOperators(A)
    ksp.setFromOptions()
    return ksp


_apply_calls = itertools.count()


def apply_python_pc(mat: PETSc.Mat, x_global: np.ndarray, pc_class: str = "FSAIPC", **options) -> np.ndarray:
    """This rank's part of M x for ``pcgcvae.<pc_class>`` set up on ``mat`` with ``options``
    (``x_global``: the whole vector, the same on every rank)."""
    prefix = f"apply{next(_apply_calls)}_"  # the same on every rank (each rank makes the same calls)
    opts = PETSc.Options()
    for k, v in options.items():
        opts[prefix + k] = v
    pc = PETSc.PC().create(comm=mat.getComm())
    try:
        pc.setOptionsPrefix(prefix)
        pc.setOperators(mat)
        pc.setType("python")
        pc.setPythonType(f"pcgcvae.{pc_class}")
        pc.setFromOptions()
        pc.setUp()
        x, y = mat.createVecs()
        lo, hi = x.getOwnershipRange()
        x.array[:] = x_global[lo:hi]
        pc.apply(x, y)
        return y.array.copy()
    finally:
        pc.destroy()
        for k in options:
            opts.delValue(prefix + k)


def dense(mat: PETSc.Mat) -> np.ndarray:
    """A sequential PETSc matrix as a dense NumPy array."""
    indptr, indices, data = mat.getValuesCSR()
    m, n = mat.getSize()
    out = np.zeros((m, n))
    for i in range(m):
        out[i, indices[indptr[i]:indptr[i + 1]]] = data[indptr[i]:indptr[i + 1]]
    return out


def random_spd(n: int, density: float, seed: int, comm=PETSc.COMM_SELF) -> PETSc.Mat:
    """A random sparse SPD matrix (diagonally dominant, random pattern, random scaling)."""
    rng = np.random.default_rng(seed)
    B = (rng.random((n, n)) < density) * rng.standard_normal((n, n))
    S = B + B.T
    np.fill_diagonal(S, 0.0)
    S += np.diag(np.abs(S).sum(1) + rng.uniform(0.1, 1.0, n))
    d = np.exp(rng.uniform(-3, 3, n))
    S = d[:, None] * S * d[None, :]
    A = PETSc.Mat().createAIJ(size=(n, n), comm=comm)
    A.setPreallocationNNZ(n)
    rows, cols = np.nonzero(S)
    for r, c in zip(rows, cols):
        A.setValue(int(r), int(c), S[r, c])
    A.assemble()
    return A


def cg_iterations(A: PETSc.Mat, options: dict, rtol: float = 1e-8) -> int:
    """CG iterations with the given preconditioner options (asserts convergence)."""
    from pcgcvae.evaluate import solve

    r = solve(A, options, rtol=rtol)
    assert r.converged, f"CG did not converge with {options}: reason {r.reason}"
    return r.iterations


def train_tiny_model(family: str, out_dir: Path, epochs: int = 25, levels: tuple[int, ...] = (1, 2)) -> Path:
    """Generate a tiny Firedrake dataset and train a small GCVAE on it (about 20 s).

    With ``PCGCVAE_TEST_MODELS`` set (scripts/run_tests.sh sets it), a model
    trained there by an earlier run of the same test command is reused.
    """
    from pcgcvae.training.dataset import generate
    from pcgcvae.training.train import build_parser, train

    shared = os.environ.get("PCGCVAE_TEST_MODELS")
    if shared:
        out_dir = Path(shared)
        out_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / f"tiny_{family}.pt").is_file():
            return out_dir / f"tiny_{family}.pt"
    data = out_dir / f"{family}_data"
    if family == "poisson":
        generate("poisson", 8, 6, 10, seed=3, out=data, progress=False)
    else:
        generate("elasticity", 6, 3, 5, seed=3, out=data, progress=False)
    ckpt = out_dir / f"tiny_{family}.pt"
    args = build_parser().parse_args([
        "--data", str(data), "--family", family, "--out", str(ckpt), "--epochs", str(epochs),
        "--hidden", "16", "--layers", "3", "--batch-size", "4", "--quiet", "--seed", "0",
        "--levels", *map(str, levels),
    ])
    train(args)
    return ckpt


def shared_tmpdir(comm) -> Path:
    """A temporary directory made on rank 0 and known to every rank."""
    path = tempfile.mkdtemp(prefix="pcgcvae-test-") if comm.rank == 0 else None
    return Path(comm.bcast(path, root=0))


def error_text(exc: BaseException) -> str:
    parts = [str(exc)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        parts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " ".join(parts)
