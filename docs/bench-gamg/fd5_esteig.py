"""GAMG with the SPAI smoothers on the foreign suite's fd5-jumps-1e6: how Chebyshev's eigenvalue estimate
decides whether CG converges (the README's "As a smoother inside GAMG" paragraph).

    python docs/bench-gamg/fd5_esteig.py

Prints, per configuration, CG's iterations and converged reason (-8: DIVERGED_INDEFINITE_PC).
"""

import firedrake  # noqa: F401  (Firedrake's PETSc first)
from petsc4py import PETSc

from pcgcvae.foreign import fd5_jumps
from pcgcvae.pc_options import PRECONDITIONERS

A = fd5_jumps(False).op
CASES = [("gamg", {}), ("gamg-gcvae-smoother", {}), ("gamg-fsai-smoother", {}),
         ("gamg-fsai-smoother", {"mg_levels_esteig_ksp_type": "cg"}),
         ("gamg-fsai-smoother", {"mg_levels_esteig_ksp_max_it": 40}),
         ("gamg-fsai-smoother", {"mg_levels_ksp_chebyshev_esteig": "0,0.1,0,1.3"})]
for i, (name, extra) in enumerate(CASES):
    prefix = f"fd5esteig{i}_"
    opts = PETSc.Options()
    for k, v in {**PRECONDITIONERS[name], **extra}.items():
        opts[prefix + k] = v
    ksp = PETSc.KSP().create()
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=1e-8, max_it=2000)
    ksp.setFromOptions()
    x, b = A.createVecs()
    b.setRandom()  # PETSc's default generator and seed: the same b every run
    ksp.solve(b, x)
    print(f"{name:22s} {extra}: {ksp.getIterationNumber()} iterations, reason {ksp.getConvergedReason()}")
    ksp.destroy()
