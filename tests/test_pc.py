"""GCVAEPC and FSAIPC from a petsc4py script: options, view, log events,
re-setup, and fewer CG iterations than Jacobi."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import cg_iterations, error_text, laplacian_2d
from petsc4py import PETSc

from pcgcvae.evaluate import parallel_options


def test_petsc4py_script_fsai_and_gcvae_beat_jacobi(tiny_poisson) -> None:
    A = laplacian_2d(24, comm=PETSc.COMM_SELF, kappa_seed=0)
    jac = cg_iterations(A, {"pc_type": "jacobi"})
    fsai = cg_iterations(A, parallel_options("fsai", 1))
    fsai2 = cg_iterations(A, parallel_options("fsai2", 1))
    gcvae = cg_iterations(A, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(tiny_poisson)})
    assert fsai < 0.75 * jac
    assert fsai2 < fsai
    assert gcvae < jac


def test_ksp_view_and_options(tiny_poisson, capfd) -> None:
    A = laplacian_2d(12, comm=PETSc.COMM_SELF, kappa_seed=1)
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOptionsPrefix("viewtest_")
    opts = PETSc.Options()
    for k, v in {"ksp_type": "cg", "pc_type": "python", "pc_python_type": "pcgcvae.GCVAEPC",
                 "pc_gcvae_model": str(tiny_poisson), "pc_gcvae_samples": 3, "pc_gcvae_seed": 5,
                 "pc_gcvae_pattern_level": 2,
                 # the model's factor, whatever the guard would predict (the guard has its own tests)
                 "pc_gcvae_guard_threshold": -1}.items():
        opts["viewtest_" + k] = v
    ksp.setOperators(A)
    ksp.setFromOptions()
    ksp.setUp()
    ctx = ksp.getPC().getPythonContext()
    assert (ctx.samples, ctx.seed, ctx.pattern_level) == (3, 5, 2)
    assert len(ctx.stats["sample_scores"]) == 3
    assert ctx.stats["kaporin"] == pytest.approx(min(ctx.stats["sample_scores"]))
    ksp.view()
    out = capfd.readouterr().out
    for needle in ("GCVAE", "family: poisson", "pattern level 2", "nnz(G)", "fill ratio", "Kaporin", "samples 3",
                   "setup times", "inference"):
        assert needle in out, needle


def test_log_events_registered(tiny_poisson) -> None:
    PETSc.Log.begin()
    A = laplacian_2d(10, comm=PETSc.COMM_SELF, kappa_seed=1)
    cg_iterations(A, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(tiny_poisson)})
    for name in ("GCVAEGraph", "GCVAEInference", "GCVAEAssembly", "GCVAEApply", "GCVAEPattern"):
        info = PETSc.Log.Event(name).getPerfInfo()
        assert info["count"] > 0, name


def test_resetup_after_value_change_reuses_pattern() -> None:
    A = laplacian_2d(10, comm=PETSc.COMM_SELF, kappa_seed=1)
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setType("cg")
    ksp.setTolerances(rtol=1e-10)
    pc = ksp.getPC()
    pc.setType("python")
    pc.setPythonType("pcgcvae.FSAIPC")
    ksp.setOperators(A)
    ksp.setUp()
    ctx = pc.getPythonContext()
    G_first = ctx.G
    pattern_first = ctx._pattern_cache["pattern"]
    b = A.createVecLeft()
    b.set(1.0)
    x = b.duplicate()
    ksp.solve(b, x)
    # Change values only: PETSc calls setUp again, the pattern and G's structure are reused.
    A.scale(3.0)
    A.shift(0.5)
    ksp.setOperators(A)
    ksp.solve(b, x)
    assert ctx.G is G_first
    assert ctx._pattern_cache["pattern"] is pattern_first
    r = b.duplicate()
    A.mult(x, r)
    r.axpy(-1.0, b)
    assert r.norm() < 1e-6 * b.norm()
    # And the factor is the one of the new values.
    ksp2 = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp2.setOperators(A)
    ksp2.getPC().setType("python")
    ksp2.getPC().setPythonType("pcgcvae.FSAIPC")
    ksp2.setUp()
    diff = ctx.G.copy()
    diff.axpy(-1.0, ksp2.getPC().getPythonContext().G)
    assert diff.norm() < 1e-12


def test_bad_options_are_refused(tiny_poisson) -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF)
    for opts, needle in (({"pc_gcvae_samples": 0}, "samples"), ({"pc_gcvae_latent": "median"}, "latent"),
                         ({"pc_gcvae_pattern_level": 7}, "pattern_level"), ({"pc_gcvae_overlap": -1}, "overlap"),
                         ({"pc_gcvae_fallback": "maybe"}, "fallback"), ({"pc_gcvae_role": "solver"}, "role")):
        with pytest.raises(PETSc.Error) as info:
            cg_iterations(A, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(tiny_poisson), **opts})
        assert needle in error_text(info.value)


def test_default_model_follows_block_size() -> None:
    from pcgcvae.pc import GCVAEPC

    pc = GCVAEPC()
    assert pc._model_for(1) == "poisson"
    assert pc._model_for(2) == "elasticity"
    assert pc._model_for(3) == "elasticity"
    pc.role = "smoother"  # -pc_gcvae_role smoother: the Kaporin-trained scalar model
    assert pc._model_for(1) == "poisson-smoother"
    assert pc._model_for(2) == "elasticity"
    pc.model_name = "/some/file.pt"
    assert pc._model_for(2) == "/some/file.pt"


def test_smoother_role_inside_gamg(tmp_path) -> None:
    """GAMG with the GCVAE smoother in role 'smoother' loads the shipped poisson-smoother model on its levels,
    says so in -ksp_view, and converges in at most GAMG's own iterations with its default smoother
    (log-normal Poisson, 10201 dofs: 13 vs 14 when this test was written)."""
    import firedrake as fd

    from pcgcvae.bench import assemble_case
    from pcgcvae.evaluate import solve
    from pcgcvae.problems import ProblemSpec, build_problem

    spec = ProblemSpec("poisson", 100, degree=1, dim=2, mesh="square", seed=5,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.1})
    P, b = assemble_case(build_problem(spec, comm=fd.COMM_SELF))
    gamg = solve(P, parallel_options("gamg", 1), b=b)
    view = tmp_path / "view.txt"
    smoothed = solve(P, {**parallel_options("gamg-gcvae-smoother", 1), "ksp_view": f"ascii:{view}"}, b=b)
    assert gamg.converged and smoothed.converged
    assert "model 'poisson-smoother'" in view.read_text() and "role smoother" in view.read_text()
    assert smoothed.iterations <= gamg.iterations, (smoothed.iterations, gamg.iterations)


def test_gcvae_sampling_is_seeded(tiny_poisson) -> None:
    A = laplacian_2d(10, comm=PETSc.COMM_SELF, kappa_seed=3)
    scores = []
    for seed in (1, 1, 2):
        from pcgcvae.evaluate import solve

        r = solve(A, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(tiny_poisson), "pc_gcvae_samples": 2,
                      "pc_gcvae_latent": "sample", "pc_gcvae_seed": seed})
        scores.append(r.pc_stats["sample_scores"])
    assert scores[0] == scores[1]
    assert not np.allclose(scores[0], scores[2], rtol=0, atol=1e-12)


def test_spectral_gate_model_in_a_solve(tmp_path, capfd) -> None:
    """A model with a spectral gate (GCVAEConfig.spectral_gate) from a petsc4py script: shut, the factor is
    FSAI's (the same CG iterations); at 1 (weights zero), the network's without a gate; -ksp_view prints the
    spectral input and the gate."""
    import json

    from pcgcvae.inference import HEADER_KEY, save_inference_model
    from pcgcvae.models_registry import shipped_model_path

    src = np.load(shipped_model_path("poisson", ".npz"))
    header = json.loads(str(src[HEADER_KEY]))
    header["architecture"]["spectral_gate"] = True
    weights = {k[: -len(".npy")] if k.endswith(".npy") else k: src[k] for k in src.files if k != HEADER_KEY}
    paths = {}
    for name, w in (("open", [0.0, 0.0]), ("shut", [0.0, -50.0])):
        paths[name] = tmp_path / f"gated-{name}.npz"
        save_inference_model(paths[name], {**weights, "spectral_gate": np.array(w, dtype=np.float32)}, header)
    A = laplacian_2d(40, comm=PETSc.COMM_SELF, kappa_seed=3)
    no_guard = {**parallel_options("gcvae", 1), "pc_gcvae_guard_threshold": -1}
    plain = cg_iterations(A, no_guard)
    fsai = cg_iterations(A, parallel_options("fsai", 1))
    assert plain != fsai  # the shipped network changes FSAI's factor here
    assert cg_iterations(A, {**no_guard, "pc_gcvae_model": str(paths["open"])}) == plain
    assert cg_iterations(A, {**no_guard, "pc_gcvae_model": str(paths["shut"])}) == fsai
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOptionsPrefix("gateview_")
    opts = PETSc.Options()
    for k, v in {"ksp_type": "cg", **no_guard, "pc_gcvae_model": str(paths["shut"])}.items():
        opts["gateview_" + k] = v
    ksp.setOperators(A)
    ksp.setFromOptions()
    ksp.setUp()
    stats = ksp.getPC().getPythonContext().stats
    assert stats["spectral_gate"] == 0.0 and stats["spectral_input"] > 1.0
    ksp.view()
    assert "spectral gate: log condition estimate" in capfd.readouterr().out
    ksp.destroy()
