"""Training data: Firedrake matrices with their FSAI targets, on disk.

    python -m pcgcvae.training.dataset --family poisson --count 200 \\
        --size-min 8 --size-max 24 --seed 0 --out data/poisson

writes ``index.json`` (specs and per-sample summary) and one compressed
``.npz`` per sample holding the scaled operator Â (CSR) in the local ordering
the preconditioner will use (``--ordering``, :mod:`pcgcvae.ordering`), the block size, and
for every pattern level the pattern S, Â² on S (level > 1), the FSAI factor
on S (the target the encoder sees) and its Kaporin score.  The same seed
gives the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..csr import CSR, check_operator, scale_symmetric
from ..fsai import fsai_values, kaporin_score
from ..ordering import DEFAULT_ORDERING, ORDERINGS, local_permutation, permute
from ..spectrum import spectral_feature

LEVELS = (1, 2)
DEFAULT_THRESHOLD = 0.02


def prepare_sample(a: CSR, block_size: int, levels: tuple[int, ...] = LEVELS,
                   threshold: float = DEFAULT_THRESHOLD, ordering: str = DEFAULT_ORDERING) -> dict[str, np.ndarray]:
    """Arrays of one training sample from an (unscaled) SPD matrix ``a``, reordered by ``ordering``."""
    from ..pattern import factor_pattern
    from ..petsc_csr import csr_to_mat

    check_operator(a)
    a = permute(a, local_permutation(a, ordering, block_size))
    ahat, _ = scale_symmetric(a)
    ahat_mat = csr_to_mat(ahat)
    out = {
        "indptr": ahat.indptr, "indices": ahat.indices, "data": ahat.data,
        "block_size": np.array(block_size),
    }
    for level in levels:
        s, a2 = factor_pattern(ahat, ahat_mat, level, threshold)
        g = fsai_values(ahat, s)
        out[f"s{level}_indptr"] = s.indptr
        out[f"s{level}_indices"] = s.indices
        out[f"s{level}_target"] = g
        out[f"s{level}_score"] = np.array(kaporin_score(g, s))
        if a2 is not None:
            out[f"s{level}_a2"] = a2
    ahat_mat.destroy()
    return out


def load_sample(path: Path, level: int, triplets: bool = True):  # noqa: ANN201
    """The :class:`~pcgcvae.training.graph.FactorGraph` of one stored sample at ``level``."""
    import torch

    from .graph import build_graph

    z = np.load(path)
    ahat = CSR(z["indptr"], z["indices"], z["data"])
    s = CSR(z[f"s{level}_indptr"], z[f"s{level}_indices"], np.zeros(len(z[f"s{level}_indices"])))
    s = s.with_data(ahat.lookup(s.rows(), s.indices))
    a2 = z[f"s{level}_a2"] if f"s{level}_a2" in z else None
    g = build_graph(ahat, s, a2_on_s=a2, block_size=int(z["block_size"]), target=z[f"s{level}_target"],
                    triplets=triplets)
    g.target_score = torch.tensor([float(z[f"s{level}_score"])])
    # the problem-level input of models with a spectral gate: the same function as the preconditioner's
    g.spectral = torch.tensor([spectral_feature(ahat, s, z[f"s{level}_target"])])
    return g


def generate(family: str, count: int, size_min: int, size_max: int, seed: int, out: Path,
             progress: bool = True, dim: int | None = None, ordering: str = DEFAULT_ORDERING,
             broad: bool = False, stencils: bool = False, mass: bool = False) -> list[dict]:
    """Generate ``count`` samples of ``family`` into ``out`` (serial); ``broad``: the wider
    distribution of :func:`pcgcvae.problems.broad_spec`; ``stencils``: the finite-difference
    grids of :func:`pcgcvae.problems.stencil_spec`; ``mass``: the mass-dominated operators of
    :func:`pcgcvae.problems.mass_spec`."""
    import firedrake as fd
    from tqdm import tqdm

    from ..petsc_csr import mat_to_csr
    from ..problems import build_problem, check_trainable, random_spec

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    index = []
    t0 = time.perf_counter()
    for i in tqdm(range(count), desc=f"{family} dataset", disable=not progress):
        size = int(rng.integers(size_min, size_max + 1))
        spec = random_spec(family, size, seed=int(rng.integers(2**31)), dim=dim, broad=broad, stencils=stencils,
                           mass=mass)
        check_trainable(spec)  # P3 / Q2: held out of all training for good
        problem = build_problem(spec, comm=fd.COMM_SELF)
        P = problem.assemble_matrix()
        arrays = prepare_sample(mat_to_csr(P), problem.block_size, ordering=ordering)
        name = f"{i:05d}.npz"
        np.savez_compressed(out / name, **arrays)
        index.append({"file": name, "spec": spec.to_dict(), "n": int(len(arrays["indptr"]) - 1),
                      "block_size": problem.block_size,
                      "fsai_score": {str(lv): float(arrays[f"s{lv}_score"]) for lv in LEVELS}})
    meta = {"family": family, "count": count, "size_range": [size_min, size_max], "seed": seed,
            "broad": broad, "stencils": stencils, "mass": mass, "dim": dim, "levels": list(LEVELS),
            "threshold": DEFAULT_THRESHOLD, "ordering": ordering,
            "seconds": round(time.perf_counter() - t0, 1), "samples": index}
    (out / "index.json").write_text(json.dumps(meta, indent=1))
    return index


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.training.dataset", description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["poisson", "elasticity"], required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size-min", type=int, default=8, help="cells per side, smallest")
    ap.add_argument("--size-max", type=int, default=24, help="cells per side, largest")
    ap.add_argument("--dim", type=int, choices=[2, 3], default=None,
                    help="fix the dimension (elasticity, --broad, --stencils: 5-point 2D or 7-point 3D grids)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--broad", action="store_true",
                    help="the wider distribution: P1/P2 and Q1 elements (P3 and Q2 are held out for the "
                         "foreign suite), 3D, anisotropy, jumps to 1e6, reaction, partial Dirichlet boundaries "
                         "(pcgcvae.problems.broad_spec)")
    ap.add_argument("--stencils", action="store_true",
                    help="finite-difference diffusion grids instead: 5-point (2D) and 7-point (3D) stencils with "
                         "log-normal, jump or anisotropic coefficients (pcgcvae.problems.stencil_spec; poisson only)")
    ap.add_argument("--mass", action="store_true",
                    help="mass-dominated reaction-diffusion instead: the broad draw with a reaction term 1e2-1e6 and "
                         "any boundary condition (pcgcvae.problems.mass_spec; poisson only)")
    ap.add_argument("--ordering", choices=ORDERINGS, default=DEFAULT_ORDERING,
                    help="local ordering before the pattern is taken (the preconditioner's -pc_gcvae_ordering)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options: keep ours out of its database
    index = generate(args.family, args.count, args.size_min, args.size_max, args.seed, args.out,
                     progress=not args.quiet, dim=args.dim, ordering=args.ordering, broad=args.broad,
                     stencils=args.stencils, mass=args.mass)
    sizes = [s["n"] for s in index]
    print(f"wrote {len(index)} {args.family} samples to {args.out} (n from {min(sizes)} to {max(sizes)})")


if __name__ == "__main__":
    main()
