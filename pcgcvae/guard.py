"""The FSAI guard: an unbiased estimate, from a few percent of the rows, of how
far a generated factor is from classical FSAI on the same pattern.

For a factor whose rows are normalised so that diag(G Â Gᵀ) = 1, the Kaporin
number of G Â Gᵀ is, up to a constant independent of G, the sum of per-row
terms -2 log G_ii (see :func:`pcgcvae.fsai.kaporin_score`).  FSAI minimises
every row's term on its own, so the per-row gap

    gap_i = -2 log G_ii + 2 log F_ii  >= 0     (F: the FSAI factor)

needs only row i's FSAI solve.  The mean gap over a uniform random sample of
each rank's rows, weighted by the rank's share of the rows (stratified
sampling), is an unbiased estimate of the global Kaporin gap
(1/n) Σ_i gap_i -- the difference of the two factors' ``-ksp_view`` scores --
at the cost of FSAI on the sampled rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .csr import CSR
from .fsai import fsai_values

DEFAULT_FRACTION = 0.02  # of each rank's owned rows
MIN_ROWS = 200  # per rank (all rows when it owns fewer)
DEFAULT_THRESHOLD = 0.06  # for models whose metadata records no calibrated threshold
DEFAULT_STEPS = 20  # CG steps per candidate factor in the spectral check (pcgcvae.trial); 0: off
DEFAULT_RATIO = 1.0  # keep a candidate when its predicted iterations are at most this times FSAI's
DEFAULT_PREDICTOR = "energy"  # pcgcvae.trial.PREDICTORS
# damped-Jacobi sweeps on the short CG runs' random exact solution (pcgcvae.trial): from a rough x* the
# 20 steps see the top of the spectrum, and the predicted ratio sat near 1.00-1.04 both on the 5-point
# stencil (true 1.14) and on in-distribution wins (true 0.96-0.99); from a smoothed one (5, 20 or 50
# sweeps) the wins predict 0.977-0.997 and the stencils 1.02-1.21 (README, "The guard"; models/poisson.md)
DEFAULT_SMOOTH = 20
# the short CG runs' exact solution (pcgcvae.trial.STARTS): "random" (smoothed as above), "near-nullspace" or
# "translations"; a model calibrated from another start (calibrate --start) uses that one by default
DEFAULT_START = "random"
# at or below this many global rows the spectral check runs each candidate's CG to convergence on one random
# right-hand side (pcgcvae.trial.full_cg) and keeps the model's factor only if it took fewer iterations: the
# 20-step prediction missed one-iteration losses there (P1/P2 Poisson at ~10^3 dofs, level 2: 42 vs 41 and
# 43 vs 42 iterations, predicted 0.992 and 0.995), and a whole solve costs less than the setup
DEFAULT_FULL_ROWS = 5000
# above those rows: where FSAI's short run extrapolates to at most this many iterations
# (pcgcvae.trial.TrialResult.estimated_iterations, about 3 times the short run), FSAI's CG runs to convergence,
# capped at as many iterations, and if it converged the whole solves decide as on small problems.  On a
# ~50-iteration solve one iteration is 2 %, below what 20 steps resolve (foreign suite, P1 3D layers at level 2:
# predicted 0.995, 50 vs 49 iterations); the cap bounds what a misjudged long solve costs (44 steps); solves of
# several hundred iterations extrapolate to more than this (the benchmark at 10^5 dofs) and stay with the short runs
DEFAULT_FULL_ITERATIONS = 64


@dataclass
class GuardSample:
    """One rank's part of the estimate: Σ gap_i over the sampled rows, how many, out of how many."""

    gap_sum: float
    sampled: int
    owned: int


def sample_rows(owned: np.ndarray, fraction: float, seed: int, min_rows: int = MIN_ROWS) -> np.ndarray:
    """A uniform random subset (without replacement, sorted) of ``owned``: ``fraction`` of it,
    at least ``min_rows`` (all of it when it is smaller); the same for the same seed."""
    n = len(owned)
    m = min(n, max(min_rows, int(np.ceil(fraction * n))))
    if m == n:
        return np.asarray(owned)
    pick = np.random.default_rng(seed).choice(n, size=m, replace=False)
    return np.asarray(owned)[np.sort(pick)]


def row_gaps(ahat: CSR, s: CSR, g: np.ndarray, rows: np.ndarray, fsai: np.ndarray | None = None) -> np.ndarray:
    """Per-row Kaporin gaps -2 log G_ii + 2 log F_ii of the row-normalised factor values
    ``g`` (aligned with ``s.data``) to FSAI on the same pattern, for ``rows`` of ``s``
    (``fsai``: FSAI's values on S when at hand, else solved for those rows)."""
    if len(rows) == 0:
        return np.zeros(0)
    f = fsai_values(ahat, s, rows=rows) if fsai is None else fsai
    diag = s.indptr[np.asarray(rows) + 1] - 1
    return 2.0 * (np.log(f[diag]) - np.log(g[diag]))


def local_sample(ahat: CSR, s: CSR, g: np.ndarray, owned: np.ndarray, fraction: float,
                 seed: int, fsai: np.ndarray | None = None) -> GuardSample:
    """This rank's :class:`GuardSample` of the factor values ``g``; with FSAI's values on S at hand
    (``fsai``: a residual model's base) every owned row's gap is exact and costs no FSAI solve."""
    rows = np.asarray(owned) if fsai is not None else sample_rows(owned, fraction, seed)
    gaps = row_gaps(ahat, s, g, rows, fsai)
    return GuardSample(float(np.sum(gaps)), len(rows), len(owned))


def combine(samples: list[GuardSample]) -> float:
    """The estimate of the global per-row Kaporin gap from every rank's sample
    (each rank's mean weighted by its number of rows)."""
    total = sum(s.owned for s in samples)
    if total == 0:
        return 0.0
    return sum(s.owned * (s.gap_sum / s.sampled) for s in samples if s.sampled) / total
