"""The guard's second signal: a short preconditioned CG run with each factor.

The sampled Kaporin gap (:mod:`pcgcvae.guard`) catches factors far from FSAI,
but not the ones whose gap equals that of in-distribution wins while their
spectrum is worse (3D stencils: DESIGN.md).  What CG will do is measured
directly instead: both factors run ``k`` CG steps on the same system
``P x = P x*`` (``x*`` random, optionally smoothed by a few damped-Jacobi sweeps, or a
combination of the operator's near-nullspace vectors or translations, :func:`modes_solution`;
``x0 = 0``), and the energy-norm error
reductions ``ρ = ‖x_k − x*‖_P / ‖x*‖_P`` give each factor's mean convergence
rate per step, ``log ρ / k``.  Their quotient predicts the ratio of the two
iteration counts:

    predicted iterations(model) / iterations(reference) = log ρ_ref / log ρ_model.

The Lanczos extreme-eigenvalue estimates of the same runs are recorded too
(``-ksp_view``); CG minimises the energy error over the Krylov space, so the
error reduction is the quantity the iteration count follows.

On small problems (a few thousand rows) a 20-step prediction cannot resolve the
one-iteration differences that decide a 40-iteration solve, while a whole solve
costs less than the setup: :func:`full_cg` runs each factor's CG to a tolerance on
the same random right-hand side and the iteration counts are compared directly.

Everything here is collective on the operator's communicator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from petsc4py import PETSc

TINY = 1e-300
FULL_RTOL = 1e-8  # full_cg's tolerance on the unpreconditioned residual (the benchmark's)


@dataclass
class TrialResult:
    """One factor's short CG run: steps taken, energy-error reduction, Lanczos estimates."""

    steps: int
    reduction: float  # ‖e_k‖_P / ‖e_0‖_P (short_cg), ‖r_k‖ / ‖b‖ (full_cg)
    emax: float
    emin: float
    converged: bool | None = None  # full_cg: whether it reached its tolerance; None: a fixed-step run

    @property
    def rate(self) -> float:
        """Mean log energy-error reduction per step (negative when CG converges)."""
        return float(np.log(max(self.reduction, TINY)) / max(self.steps, 1))

    def estimated_iterations(self) -> float:
        """A fixed-step run's extrapolation of its iterations to the whole solve's tolerance (:data:`FULL_RTOL`)
        at its mean rate: steps x log(rtol) / log(reduction) (+inf when it did not reduce the error, 0 when it
        solved exactly).  Rough: on the foreign suite 58.8 for 49 iterations and 47 for 35, but 75.6 for a
        41-iteration solve and 78.9 for a 441-iteration one (CG's first steps are its fastest)."""
        if not 0.0 < self.reduction < 1.0:
            return 0.0 if self.reduction == 0.0 else float("inf")
        return self.steps * float(np.log(FULL_RTOL)) / float(np.log(self.reduction))

    @property
    def condition(self) -> float:
        """Lanczos estimate of the condition number of the preconditioned operator."""
        return self.emax / self.emin if self.emin > 0 else float("inf")


class _FactorApply:
    """PETSc Python PC context applying M = Gᵀ G with one work vector (Gᵀ explicit when given)."""

    def __init__(self, G: PETSc.Mat, GT: PETSc.Mat | None = None) -> None:
        self.G = G
        self.GT = GT
        self.work = G.createVecLeft()

    def apply(self, pc: PETSc.PC, x: PETSc.Vec, y: PETSc.Vec) -> None:
        self.G.mult(x, self.work)
        if self.GT is not None:
            self.GT.mult(self.work, y)
        else:
            self.G.multTranspose(self.work, y)

    def destroy(self, pc: PETSc.PC | None = None) -> None:
        """Free the work vector (PETSc calls it when the PC is destroyed; safe to call twice)."""
        self.work.destroy()


SMOOTHING_WEIGHT = 2.0 / 3.0  # damped Jacobi's weight in exact_solution's sweeps


def exact_solution(P: PETSc.Mat, seed: int, sweeps: int = 0) -> PETSc.Vec:
    """A random ``x*`` (each rank draws its own entries from ``seed`` and its rank), then ``sweeps``
    damped-Jacobi sweeps x <- x - ω D⁻¹ P x (ω = 2/3): they damp its high-frequency part, so the
    short CG runs start from the smooth error whose reduction sets a solve's iteration count."""
    x = P.createVecRight()
    rng = np.random.default_rng([seed, P.getComm().getRank()])
    x.array[:] = rng.standard_normal(x.getLocalSize())
    if sweeps > 0:
        dinv = P.getDiagonal()
        dinv.reciprocal()
        r = P.createVecLeft()
        try:
            for _ in range(sweeps):
                P.mult(x, r)
                r.pointwiseMult(r, dinv)
                x.axpy(-SMOOTHING_WEIGHT, r)
        finally:
            r.destroy()
            dinv.destroy()
    return x


# -pc_gcvae_guard_start: the short runs' exact solution x* (:func:`exact_solution`, :func:`modes_solution`); a run
# asked to start from the near-nullspace or the translations starts from the random x* where they have no energy
STARTS = ("random", "near-nullspace", "translations")
# what x* is made of, in words, for the starts other than the random one (views and the calibration's summary)
MODES_IN_WORDS = {"near-nullspace": "near-nullspace vectors", "translations": "translations"}


def modes_solution(P: PETSc.Mat, seed: int, start: str) -> PETSc.Vec | None:
    """``x*`` from the operator's lowest-energy modes, a random combination (the same coefficients on every
    rank) of: its near-nullspace vectors (``start`` "near-nullspace": ``MatSetNearNullSpace``, as set for
    GAMG -- the rigid-body modes of elasticity, Firedrake's ``near_nullspace``), or its translations
    ("translations": the constant of each component of its block; of a scalar operator, the constant), with
    the operator's null space (``MatSetNullSpace``) removed.  These are the errors CG reduces last: short runs
    from them see the bottom of the spectrum that sets a solve's iteration count, where runs from a random x*
    see its top.  None where the operator has no near-nullspace vectors (of its layout), or where nothing of
    positive energy is left (a pure Neumann scalar operator): :func:`exact_solution` instead.  Collective."""
    if start not in ("near-nullspace", "translations"):
        raise ValueError(f"unknown start '{start}'; expected near-nullspace or translations")
    x = P.createVecRight()
    nlocal = x.getLocalSize()
    rng = np.random.default_rng([seed, 7919])
    if start == "near-nullspace":
        near = P.getNearNullSpace()
        vecs = list(near.getVecs()) if near else []
        if not vecs or any(v.getLocalSize() != nlocal for v in vecs):  # none, or not this operator's layout
            x.destroy()
            return None
        x.set(float(rng.standard_normal()) if near.hasConstant() else 0.0)
        for v in vecs:
            x.axpy(float(rng.standard_normal()), v)
    else:  # component c of every block gets the constant c
        bs = P.getBlockSize()
        x.array[:] = np.tile(rng.standard_normal(bs), nlocal // bs)
    null = P.getNullSpace()
    if null:
        null.remove(x)
    px = P.createVecLeft()
    P.mult(x, px)
    energy, norm2 = x.dot(px), x.dot(x)
    diag = P.getDiagonal()
    scale = diag.norm(PETSc.NormType.INFINITY)
    px.destroy()
    diag.destroy()
    if not (norm2 > 0 and energy > 1e-10 * scale * norm2):
        x.destroy()
        return None
    return x


def _run_cg(P: PETSc.Mat, G: PETSc.Mat, GT: PETSc.Mat | None, b: PETSc.Vec, x: PETSc.Vec, rtol: float,
            max_it: int) -> tuple[int, bool, float, float, float]:
    """CG on ``P x = b`` from ``x = 0`` preconditioned by Gᵀ G, unpreconditioned residual norm: the
    steps taken, whether ``rtol`` was reached, the final residual reduction and the Lanczos estimates."""
    ctx = _FactorApply(G, GT)
    ksp = PETSc.KSP().create(comm=P.getComm())
    try:
        ksp.setOptionsPrefix("pcgcvae_guard_trial_")  # no options are read: setFromOptions is not called
        ksp.setOperators(P, P)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=rtol, atol=0.0, divtol=1e300, max_it=max_it)
        ksp.setComputeSingularValues(True)
        pc = ksp.getPC()
        pc.setType(PETSc.PC.Type.PYTHON)
        pc.setPythonContext(ctx)
        x.set(0.0)
        ksp.solve(b, x)
        taken = ksp.getIterationNumber()
        converged = ksp.getConvergedReason() > 0
        bnorm = b.norm()
        reduction = ksp.getResidualNorm() / bnorm if bnorm > 0 else 0.0
        emax, emin = ksp.computeExtremeSingularValues() if taken > 0 else (1.0, 1.0)
    finally:
        ksp.destroy()
        ctx.destroy()
    return taken, converged, float(reduction), float(emax), float(emin)


def short_cg(P: PETSc.Mat, G: PETSc.Mat, xstar: PETSc.Vec, steps: int,
             GT: PETSc.Mat | None = None) -> TrialResult:
    """``steps`` CG iterations on ``P x = P xstar`` from ``x0 = 0`` preconditioned by Gᵀ G
    (``GT``: Gᵀ assembled, else G's transpose product)."""
    b = P.createVecLeft()
    P.mult(xstar, b)
    x = P.createVecRight()
    try:
        taken, _, _, emax, emin = _run_cg(P, G, GT, b, x, 1e-30, steps)
        x.axpy(-1.0, xstar)  # the error e_k
        P.mult(x, b)
        energy_k = x.dot(b)
        P.mult(xstar, b)
        energy_0 = xstar.dot(b)
    finally:
        x.destroy()
        b.destroy()
    reduction = float(np.sqrt(max(energy_k, 0.0) / energy_0)) if energy_0 > 0 else 1.0
    return TrialResult(taken, reduction, emax, emin)


def full_cg(P: PETSc.Mat, G: PETSc.Mat, b: PETSc.Vec, GT: PETSc.Mat | None = None, rtol: float = FULL_RTOL,
            max_it: int | None = None) -> TrialResult:
    """A whole solve: CG to ``rtol`` on ``P x = b`` from ``x0 = 0`` preconditioned by Gᵀ G, for
    problems small enough that one solve per candidate costs less than the setup.  Its ``steps``
    is the iteration count itself (``converged`` says whether ``rtol`` was reached within
    ``max_it``, default max(100, 2 n)); ``reduction`` is the residual's."""
    n = P.getSize()[0]
    x = P.createVecRight()
    try:
        taken, converged, reduction, emax, emin = _run_cg(P, G, GT, b, x, rtol, max_it or max(100, 2 * n))
    finally:
        x.destroy()
    return TrialResult(taken, reduction, emax, emin, converged=converged)


PREDICTORS = ("energy", "condition", "mean")


def energy_ratio(model: TrialResult, reference: TrialResult) -> float:
    """Predicted iterations with ``model`` over those with ``reference``: the quotient of their
    energy-error rates; 1 when neither reduced the error (and +inf when only the reference did)."""
    if model.rate >= 0:
        return 1.0 if reference.rate >= 0 else float("inf")
    return reference.rate / model.rate if reference.rate < 0 else 0.0


def condition_ratio(model: TrialResult, reference: TrialResult) -> float:
    """The same prediction from the Lanczos estimates: sqrt(κ_model / κ_reference) (CG's bound)."""
    if not (np.isfinite(model.condition) and np.isfinite(reference.condition)):
        return 1.0 if model.condition == reference.condition else (
            float("inf") if not np.isfinite(model.condition) else 0.0)
    return float(np.sqrt(model.condition / reference.condition))


def iteration_ratio(model: TrialResult, reference: TrialResult) -> float:
    """Two whole solves (:func:`full_cg`): the quotient of their iteration counts (+inf when only the
    model's run failed to converge, 0 when only the reference's did, 1 when neither did)."""
    if not model.converged:
        return 1.0 if not reference.converged else float("inf")
    if not reference.converged:
        return 0.0
    return model.steps / max(reference.steps, 1)


def predicted_ratio(model: TrialResult, reference: TrialResult, predictor: str = "energy") -> float:
    """Predicted iterations with ``model`` over those with ``reference`` by ``predictor``: the
    energy-error rates, the condition estimates, or the mean of the two (:data:`PREDICTORS`);
    for whole solves (:func:`full_cg`) the measured quotient of the iteration counts."""
    if model.converged is not None and reference.converged is not None:
        return iteration_ratio(model, reference)
    if predictor == "energy":
        return energy_ratio(model, reference)
    if predictor == "condition":
        return condition_ratio(model, reference)
    if predictor == "mean":
        return 0.5 * (energy_ratio(model, reference) + condition_ratio(model, reference))
    raise ValueError(f"unknown predictor '{predictor}'; expected one of {', '.join(PREDICTORS)}")
