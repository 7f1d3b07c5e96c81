"""The FSAI guard of GCVAEPC: an unbiased sampled estimate of the Kaporin gap to
FSAI on the same pattern, which builds FSAI instead above a threshold."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import laplacian_2d, python_ksp
from petsc4py import PETSc

from pcgcvae.evaluate import parallel_options, solve
from pcgcvae.guard import GuardSample, combine, sample_rows


def _setup(A: PETSc.Mat, pc_class: str = "GCVAEPC", **options):
    ksp = python_ksp(A, pc_class, **options)
    ksp.setUp()
    return ksp, ksp.getPC().getPythonContext()


def test_sample_rows_is_seeded_uniform_and_covers_small_blocks() -> None:
    owned = np.arange(10, 10010)
    a, b = sample_rows(owned, 0.02, seed=4), sample_rows(owned, 0.02, seed=4)
    assert np.array_equal(a, b) and len(a) == 200 and np.all(np.diff(a) > 0)
    assert set(a) <= set(owned)
    assert not np.array_equal(a, sample_rows(owned, 0.02, seed=5))
    assert np.array_equal(sample_rows(np.arange(50), 0.02, seed=0), np.arange(50))  # fewer than MIN_ROWS: all
    assert len(sample_rows(np.arange(100000), 0.05, seed=0)) == 5000


def test_combine_weights_ranks_by_their_rows() -> None:
    # rank 0: 100 rows, mean gap 0.1 from 10 sampled; rank 1: 300 rows, mean gap 0.3 from 30
    est = combine([GuardSample(1.0, 10, 100), GuardSample(9.0, 30, 300), GuardSample(0.0, 0, 0)])
    assert est == pytest.approx((100 * 0.1 + 300 * 0.3) / 400)
    assert combine([GuardSample(0.0, 0, 0)]) == 0.0


@pytest.mark.parametrize("level", [1, 2])
def test_estimate_is_the_exact_gap_with_every_row_and_close_with_a_sample(tiny_poisson, level: int) -> None:
    """With every row sampled the estimate is exactly GCVAE's Kaporin score minus FSAI's (as in
    -ksp_view); with 5 % of 10⁴ rows it is within a few standard errors of it."""
    A = laplacian_2d(100, comm=PETSc.COMM_SELF, kappa_seed=7)
    common = {"pc_gcvae_model": str(tiny_poisson), "pc_gcvae_pattern_level": level, "pc_gcvae_guard_threshold": 1e9}
    _, fsai = _setup(A, "FSAIPC", pc_fsai_pattern_level=level, pc_fsai_ordering="nd")
    _, full = _setup(A, **common, pc_gcvae_guard_fraction=1.0)
    exact = full.stats["kaporin"] - fsai.stats["kaporin"]
    assert exact > 0
    assert full.stats["guard"]["estimate"] == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert full.stats["guard"]["rows"] == 10000 and not full.stats["guard"]["fired"]
    _, part = _setup(A, **common, pc_gcvae_guard_fraction=0.05)
    assert part.stats["guard"]["rows"] == 500
    assert part.stats["guard"]["estimate"] == pytest.approx(exact, rel=0.25)


def test_guard_at_threshold_zero_builds_exactly_fsai(tiny_poisson, capfd) -> None:
    """A generated factor is never exactly FSAI, so threshold 0 always fires; the factor is then
    FSAI's (the same matrix as FSAIPC's), and -ksp_view says so."""
    A = laplacian_2d(30, comm=PETSc.COMM_SELF, kappa_seed=2)
    ksp, ctx = _setup(A, pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_threshold=0.0)
    _, fsai = _setup(A, "FSAIPC", pc_fsai_ordering="nd")
    assert ctx.stats["guard"]["fired"]
    diff = ctx.G.copy()
    diff.axpy(-1.0, fsai.G)
    assert diff.norm() < 1e-12 * fsai.G.norm()
    assert ctx.stats["kaporin"] == pytest.approx(fsai.stats["kaporin"], abs=1e-12)
    ksp.view()
    out = capfd.readouterr().out
    assert "FIRED: classical FSAI" in out and "threshold 0.0000 (-pc_gcvae_guard_threshold)" in out


def test_guard_off_and_option_errors(tiny_poisson, capfd) -> None:
    A = laplacian_2d(12, comm=PETSc.COMM_SELF, kappa_seed=2)
    ksp, ctx = _setup(A, pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_threshold=-1)
    assert ctx.stats["guard"] is None
    ksp.view()
    assert "guard off (-pc_gcvae_guard_threshold < 0)" in capfd.readouterr().out
    for opts, needle in (({"pc_gcvae_guard_fraction": 0}, "guard_fraction"),
                         ({"pc_gcvae_guard_fraction": 1.5}, "guard_fraction")):
        with pytest.raises(PETSc.Error) as info:
            _setup(A, pc_gcvae_model=str(tiny_poisson), **opts)
        assert needle in str(info.value) or needle in str(info.value.__cause__)


def _firedrake_poisson(size: int, degree: int, seed: int) -> PETSc.Mat:
    import firedrake as fd

    from pcgcvae.problems import ProblemSpec, build_problem

    spec = ProblemSpec("poisson", size, degree=degree, dim=2, mesh="square", seed=seed,
                       params={"kappa": "lognormal", "sigma": 1.0, "corr": 0.2})
    return build_problem(spec, comm=fd.COMM_SELF).assemble_matrix()


def test_guard_quiet_in_distribution_and_fires_out_of_it() -> None:
    """The shipped Poisson model with its calibrated threshold: on a P1 log-normal problem of its
    training family (a seed no training set uses) the guard keeps the GCVAE factor, which needs
    fewer CG iterations than FSAI; on P3 elements, which no model has seen and where the model
    without the guard needs far more iterations than FSAI, it fires and the solve needs FSAI's
    iterations exactly."""
    p1 = _firedrake_poisson(96, 1, seed=424242)
    fsai = solve(p1, parallel_options("fsai", 1))
    gcvae = solve(p1, parallel_options("gcvae", 1))
    assert not gcvae.pc_stats["guard"]["fired"], gcvae.pc_stats["guard"]
    assert gcvae.iterations < fsai.iterations

    p3 = _firedrake_poisson(32, 3, seed=424243)
    fsai = solve(p3, parallel_options("fsai", 1))
    bare = solve(p3, {**parallel_options("gcvae", 1), "pc_gcvae_guard_threshold": -1})
    guarded = solve(p3, parallel_options("gcvae", 1))
    assert bare.iterations > 1.1 * fsai.iterations, (bare.iterations, fsai.iterations)
    assert guarded.pc_stats["guard"]["fired"], guarded.pc_stats["guard"]
    assert guarded.iterations == fsai.iterations


def test_guard_decision_is_cached_per_structure(tiny_poisson, capfd) -> None:
    """New values on the same structure keep the decision without sampling again (and -ksp_view says so);
    -pc_gcvae_guard_recheck estimates again; another structure always estimates again."""
    A = laplacian_2d(30, comm=PETSc.COMM_SELF, kappa_seed=2)
    for recheck, reused in (("false", True), ("true", False)):
        ksp, ctx = _setup(A.copy(), pc_gcvae_model=str(tiny_poisson), pc_gcvae_guard_recheck=recheck)
        first = dict(ctx.stats["guard"])
        assert first["reused"] is False
        P = ksp.getOperators()[0]
        P.scale(3.0)  # new values, same structure
        ksp.setUp()
        assert ctx.stats["guard"]["reused"] is reused
        assert ctx.stats["guard"]["fired"] == first["fired"]
        assert ("guard decision" in ctx.stats["reused"]) is reused
        if reused:
            ksp.view()
            assert "decision reused from an earlier setup" in capfd.readouterr().out
        B = laplacian_2d(31, comm=PETSc.COMM_SELF, kappa_seed=2)  # another structure
        ksp.reset()
        ksp.setOperators(B)
        ksp.setUp()
        assert ctx.stats["guard"]["reused"] is False
