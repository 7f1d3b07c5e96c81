"""The preconditioners the evaluation, the benchmark and the foreign suite compare, by name, as
PETSc options without a prefix (no PETSc import: the suite's and the benchmark's command lines
read it before PETSc starts)."""

from __future__ import annotations

NO_GUARD: dict[str, object] = {"pc_gcvae_guard_threshold": -1}  # the model's factor as generated

PRECONDITIONERS: dict[str, dict[str, object]] = {
    "none": {"pc_type": "none"},
    "jacobi": {"pc_type": "jacobi"},
    "sor": {"pc_type": "sor"},
    "icc": {"pc_type": "icc"},  # becomes block Jacobi + ICC(0) in parallel
    "fsai": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"},
    "fsai2": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC", "pc_fsai_pattern_level": 2},
    "gcvae": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC"},
    "gcvae2": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", "pc_gcvae_pattern_level": 2},
    # the model's factor as generated: the guard off (a threshold < 0)
    "gcvae-noguard": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", **NO_GUARD},
    "gcvae2-noguard": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", "pc_gcvae_pattern_level": 2,
                       **NO_GUARD},
    # K = 4 samples, the best Kaporin number wins (mean latent first)
    "gcvae-k4": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", "pc_gcvae_samples": 4,
                 "pc_gcvae_latent": "mean"},
    # halo rows of overlap 1 before building the local factor (the same as without on one rank)
    "fsai-ov1": {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC", "pc_fsai_overlap": 1},
    "gcvae-ov1": {"pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC", "pc_gcvae_overlap": 1},
    "gamg": {"pc_type": "gamg"},
    # the SPAI factors as smoothers inside GAMG (Chebyshev on every level, its interval from a CG estimate of the
    # smoothed operator's largest eigenvalue: GMRES's, the default, can fall short on large coefficient jumps and
    # then the multigrid preconditioner is indefinite -- README, "As a smoother inside GAMG")
    "gamg-fsai-smoother": {"pc_type": "gamg", "mg_levels_ksp_type": "chebyshev", "mg_levels_esteig_ksp_type": "cg",
                           "mg_levels_pc_type": "python", "mg_levels_pc_python_type": "pcgcvae.FSAIPC"},
    # 3D elasticity's coarse GAMG levels have block size 6, which no model knows: FSAI there (said in -ksp_view)
    # role smoother: the Kaporin-trained model for scalar operators (see checkpoint.default_model_name)
    "gamg-gcvae-smoother": {"pc_type": "gamg", "mg_levels_ksp_type": "chebyshev", "mg_levels_esteig_ksp_type": "cg",
                            "mg_levels_pc_type": "python", "mg_levels_pc_python_type": "pcgcvae.GCVAEPC",
                            "mg_levels_pc_gcvae_fallback": "fsai", "mg_levels_pc_gcvae_role": "smoother"},
}
# the same smoothers with the guard off on every level
PRECONDITIONERS["gamg-gcvae-smoother-noguard"] = {**PRECONDITIONERS["gamg-gcvae-smoother"],
                                                "mg_levels_pc_gcvae_guard_threshold": -1}
