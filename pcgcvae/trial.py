"""The guard's second signal: a short preconditioned CG run with each factor.

The sampled Kaporin gap (:mod:`pcgcvae.guard`) catches factors far from FSAI,
but not the ones whose gap equals that of in-distribution wins while their
spectrum is worse (3D stencils: DESIGN.md).  What CG will do is measured
directly instead: both factors run ``k`` CG steps on the same system
``P x = P x*`` (``x*`` random, optionally smoothed by a few damped-Jacobi sweeps;
``x0 = 0``), and the energy-norm error
reductions ``ρ = ‖x_k − x*‖_P / ‖x*‖_P`` give each factor's mean convergence
rate per step, ``log ρ / k``.  Their quotient predicts the ratio of the two
iteration counts:

    predicted iterations(model) / iterations(reference) = log ρ_ref / log ρ_model.

The Lanczos extreme-eigenvalue estimates of the same runs are recorded too
(``-ksp_view``); CG minimises the energy error over the Krylov space, so the
error reduction is the quantity the iteration count follows.

Everything here is collective on the operator's communicator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from petsc4py import PETSc

TINY = 1e-300


@dataclass
class TrialResult:
    """One factor's short CG run: steps taken, energy-error reduction, Lanczos estimates."""

    steps: int
    reduction: float  # ‖e_k‖_P / ‖e_0‖_P
    emax: float
    emin: float

    @property
    def rate(self) -> float:
        """Mean log energy-error reduction per step (negative when CG converges)."""
        return float(np.log(max(self.reduction, TINY)) / max(self.steps, 1))

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


def short_cg(P: PETSc.Mat, G: PETSc.Mat, xstar: PETSc.Vec, steps: int,
             GT: PETSc.Mat | None = None) -> TrialResult:
    """``steps`` CG iterations on ``P x = P xstar`` from ``x0 = 0`` preconditioned by Gᵀ G
    (``GT``: Gᵀ assembled, else G's transpose product)."""
    comm = P.getComm()
    b = P.createVecLeft()
    P.mult(xstar, b)
    x = P.createVecRight()
    ctx = _FactorApply(G, GT)
    ksp = PETSc.KSP().create(comm=comm)
    try:
        ksp.setOptionsPrefix("pcgcvae_guard_trial_")  # no options are read: setFromOptions is not called
        ksp.setOperators(P, P)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=1e-30, atol=0.0, divtol=1e300, max_it=steps)
        ksp.setComputeSingularValues(True)
        pc = ksp.getPC()
        pc.setType(PETSc.PC.Type.PYTHON)
        pc.setPythonContext(ctx)
        ksp.solve(b, x)
        taken = ksp.getIterationNumber()
        emax, emin = ksp.computeExtremeSingularValues() if taken > 0 else (1.0, 1.0)
        x.axpy(-1.0, xstar)  # the error e_k
        P.mult(x, b)
        energy_k = x.dot(b)
        P.mult(xstar, b)
        energy_0 = xstar.dot(b)
    finally:
        ksp.destroy()
        ctx.destroy()
        x.destroy()
        b.destroy()
    reduction = float(np.sqrt(max(energy_k, 0.0) / energy_0)) if energy_0 > 0 else 1.0
    return TrialResult(taken, reduction, float(emax), float(emin))


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


def predicted_ratio(model: TrialResult, reference: TrialResult, predictor: str = "energy") -> float:
    """Predicted iterations with ``model`` over those with ``reference`` by ``predictor``: the
    energy-error rates, the condition estimates, or the mean of the two (:data:`PREDICTORS`)."""
    if predictor == "energy":
        return energy_ratio(model, reference)
    if predictor == "condition":
        return condition_ratio(model, reference)
    if predictor == "mean":
        return 0.5 * (energy_ratio(model, reference) + condition_ratio(model, reference))
    raise ValueError(f"unknown predictor '{predictor}'; expected one of {', '.join(PREDICTORS)}")
