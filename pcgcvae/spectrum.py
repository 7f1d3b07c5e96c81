"""A problem-level spectral input: how ill-conditioned FSAI leaves the local operator.

A residual GCVAE's correction trades the two ends of the spectrum of G Â Gᵀ: it lifts the smallest
eigenvalues (the smooth error modes of a diffusion operator) and pays with the largest.  That is a gain
where FSAI leaves κ in the hundreds or more and a pure loss where FSAI is already nearly exact
(mass-dominated operators, κ ≈ 1.5-2.5; ``pcgcvae/models/poisson.md``).  Which of the two holds is a
global property of the operator that a message-passing decoder, which sees a few hops of the graph,
cannot tell.  This module measures it: the condition number of F Â Fᵀ (F: FSAI's factor on the pattern)
estimated from the Ritz values of a fixed number of Lanczos steps from a fixed start vector, on the
rank's local (scaled, reordered) operator.  The same function runs in training (on each stored sample)
and in the preconditioner's setup (on each rank's block), so the decoder's input is the same quantity in
both; a model with ``GCVAEConfig.spectral_gate`` scales its correction by a learned function of it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .csr import CSR

LANCZOS_STEPS = 20  # as many as the guard's short CG runs (pcgcvae.guard.DEFAULT_STEPS)
LANCZOS_SEED = 20240518
FEATURE_MAX = 12.0  # log κ is clipped to [0, FEATURE_MAX]


def condition_estimate(ahat: CSR, s: CSR, g: np.ndarray, steps: int = LANCZOS_STEPS) -> float:
    """λmax / λmin of the Ritz values of G Â Gᵀ after ``steps`` Lanczos steps (G: the lower-triangular
    factor with values ``g`` on the pattern ``s``) from a seeded random start vector; 1.0 for an
    empty operator.  A lower bound of the condition number that grows towards it with ``steps``."""
    n = ahat.n
    if n == 0:
        return 1.0
    a, gm = ahat.scipy(), s.scipy(np.asarray(g, dtype=np.float64))
    gt = gm.T  # a CSC view of G's arrays: its products cost less than building Gᵀ in CSR
    v = np.random.default_rng(LANCZOS_SEED).standard_normal(n)
    v /= np.linalg.norm(v)
    v_prev = np.zeros(n)
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    for _ in range(min(steps, n)):
        w = gm @ (a @ (gt @ v))
        alpha = float(v @ w)
        w -= alpha * v
        w -= beta * v_prev
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        if not np.isfinite(beta) or beta <= 1e-12 * max(abs(alpha), 1e-300):
            break  # an invariant subspace: the Ritz values are eigenvalues
        betas.append(beta)
        w /= beta
        v_prev, v = v, w
    theta = sla.eigh_tridiagonal(np.array(alphas), np.array(betas[: len(alphas) - 1]), eigvals_only=True)
    lo, hi = float(theta[0]), float(theta[-1])
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= 0:
        return float("inf")
    return hi / lo if lo > 0 else float("inf")


def spectral_feature(ahat: CSR, s: CSR, g: np.ndarray, steps: int = LANCZOS_STEPS) -> float:
    """The decoder's problem-level input: log of :func:`condition_estimate`, clipped to
    [0, :data:`FEATURE_MAX`]."""
    kappa = condition_estimate(ahat, s, g, steps)
    return float(np.clip(np.log(kappa) if np.isfinite(kappa) else FEATURE_MAX, 0.0, FEATURE_MAX))
