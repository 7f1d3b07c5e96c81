"""What a factor does to the spectrum, on foreign-suite problems (a diagnostic, not the product).

For each problem (names as in ``docs/bench-foreign/foreign.md``) and preconditioner (names of
``pcgcvae.pc_options``), solve the suite's random right-hand side with CG (rtol 1e-8, unpreconditioned
norm: the suite's options) and print the iterations and the extreme eigenvalue estimates of the
preconditioned operator from that solve (``KSPSetComputeSingularValues``).  Also prints the distribution of
log F_ii (FSAI's diagonal on Â, i.e. -1/2 log of the local Schur complements: a decoder input of models with
``fsai_inputs``) and the input of a spectral gate (:func:`pcgcvae.spectrum.spectral_feature`) at pattern
levels 1 and 2, and with ``--datasets`` log F_ii per training sample.

    python scripts/foreign_spectrum.py --problems p2-reaction-disc fd9-aniso-1e-2 \\
        --pcs fsai fsai2 gcvae-noguard gcvae2-noguard [--model PATH] [--datasets data/poisson ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def log_fsai_diagonal(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """log F_ii of FSAI's values on a lower-triangular pattern S (CSR arrays)."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return np.log(values[rows == indices])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", required=True)
    ap.add_argument("--pcs", nargs="+", default=["fsai", "fsai2", "gcvae-noguard", "gcvae2-noguard"])
    ap.add_argument("--model", default=None, help="-pc_gcvae_model for the GCVAE rows (default: the shipped one)")
    ap.add_argument("--datasets", nargs="*", default=[], type=Path,
                    help="training dataset directories: log F_ii per sample (first 40 samples of each)")
    args = ap.parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
    import firedrake  # noqa: F401  (first: it initialises PETSc)
    from petsc4py import PETSc

    from pcgcvae.csr import CSR
    from pcgcvae.foreign import CG_OPTIONS, PC_OPTIONS, _random_rhs, all_cases
    from pcgcvae.petsc_csr import mat_to_csr
    from pcgcvae.spectrum import spectral_feature
    from pcgcvae.training.dataset import prepare_sample

    cases = {c.name: c for c in all_cases()}
    for k, name in enumerate(args.problems):
        built = cases[name].build(False)
        rhs = _random_rhs(built, name)
        sample = prepare_sample(mat_to_csr(built.pc_matrix), built.pc_matrix.getBlockSize())
        for level in (1, 2):
            ld = log_fsai_diagonal(sample[f"s{level}_indptr"], sample[f"s{level}_indices"],
                                   sample[f"s{level}_target"])
            ahat = CSR(sample["indptr"], sample["indices"], sample["data"])
            s = CSR(sample[f"s{level}_indptr"], sample[f"s{level}_indices"], np.zeros(len(ld)))
            phi = spectral_feature(ahat, s, sample[f"s{level}_target"])
            print(f"{name} L{level}: n {len(ld)}, log F_ii 5/50/95 % {np.percentile(ld, [5, 50, 95]).round(3)}, "
                  f"spectral gate input (log condition estimate of F A F^T) {phi:.3f}")
        for pc in args.pcs:
            prefix = f"spectrum{k}_{pc.replace('-', '_')}_"
            opts = PETSc.Options()
            full = {**CG_OPTIONS, **PC_OPTIONS[pc]}
            if args.model and pc.startswith("gcvae"):
                full["pc_gcvae_model"] = args.model
            for key, v in full.items():
                opts[prefix + key] = v
            ksp = PETSc.KSP().create(comm=built.op.getComm())
            ksp.setOptionsPrefix(prefix)
            ksp.setOperators(built.op, built.pmat)
            ksp.setComputeSingularValues(True)
            ksp.setFromOptions()
            x = built.op.createVecRight()
            ksp.solve(rhs, x)
            hi, lo = ksp.computeExtremeSingularValues()
            print(f"  {pc:15s} its {ksp.getIterationNumber():5d}  lambda_min {lo:.4g}  lambda_max {hi:.4g}  "
                  f"cond {hi / lo:.4g}")
            ksp.destroy()
            for key in full:
                opts.delValue(prefix + key)
    for d in args.datasets:
        for level in (1, 2):
            medians = []
            for fn in sorted(d.glob("*.npz"))[:40]:
                z = np.load(fn)
                medians.append(np.median(log_fsai_diagonal(z[f"s{level}_indptr"], z[f"s{level}_indices"],
                                                           z[f"s{level}_target"])))
            print(f"{d} L{level}: median log F_ii per sample, 5/50/95 % of samples "
                  f"{np.percentile(medians, [5, 50, 95]).round(3)}")


if __name__ == "__main__":
    main()
