"""What users combining preconditioners run into: a nonsymmetric operator, an operator
replaced by one of another size or structure, the operator's matrix type, and what a
re-setup with new values reuses."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import cg_iterations, error_text, laplacian_2d, python_ksp
from petsc4py import PETSc

from pcgcvae.pc import matrix_family


def one_sided_dirichlet(m: int) -> PETSc.Mat:
    """The 5-point Laplacian with the first grid row's unknowns set to identity rows, their
    columns left in place (Dirichlet rows eliminated on one side only, as some DMDA examples do)."""
    A = laplacian_2d(m, comm=PETSc.COMM_SELF)
    A.zeroRows(np.arange(m, dtype=PETSc.IntType), diag=1.0)
    return A


@pytest.mark.parametrize("pc_class", ["GCVAEPC", "FSAIPC"])
def test_nonsymmetric_operator_is_refused_naming_the_asymmetry(tiny_poisson, pc_class: str) -> None:
    A = one_sided_dirichlet(8)
    opts = {"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {}
    ksp = python_ksp(A, pc_class, **opts)
    with pytest.raises(PETSc.Error) as info:
        ksp.setUp()
    text = error_text(info.value)
    stem = "pc_gcvae_" if pc_class == "GCVAEPC" else "pc_fsai_"
    assert "not symmetric" in text and "largest asymmetry" in text, text
    # the worst pair couples a Dirichlet row (0..7, zeroed, diagonal 1) with its neighbour in the next
    # grid row (8..15, diagonal 4): scaled entries 0 and -1/sqrt(1 * 4) = -0.5
    assert "= 0.5 (" in text and f"-{stem}check_symmetry false" in text, text
    row = int(text.split("at row ")[1].split(",")[0])
    col = int(text.split("column ")[1].split(" ")[0])
    assert {row // 8, col // 8} == {0, 1} and abs(row - col) == 8, (row, col)


def test_symmetry_check_can_be_skipped_and_tolerates_rounding(tiny_poisson) -> None:
    A = one_sided_dirichlet(8)
    ksp = python_ksp(A, "FSAIPC", pc_fsai_check_symmetry="false")
    ksp.setUp()  # the user's choice: no error
    assert ksp.getPC().getPythonContext().G is not None
    # a symmetric matrix perturbed at rounding level passes the default tolerance
    B = laplacian_2d(8, comm=PETSc.COMM_SELF, kappa_seed=1)
    B.setValue(9, 10, B.getValue(9, 10) * (1 + 1e-13))
    B.assemble()
    assert cg_iterations(B, {"pc_type": "python", "pc_python_type": "pcgcvae.FSAIPC"}) > 0
    with pytest.raises(PETSc.Error) as info:
        python_ksp(B, "FSAIPC", pc_fsai_symmetry_tol=-1.0).setUp()
    assert "symmetry_tol" in error_text(info.value)


def _solve_iterations(ksp: PETSc.KSP, A: PETSc.Mat) -> int:
    b = A.createVecLeft()
    b.set(1.0)
    x = A.createVecRight()
    ksp.setOperators(A)
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=1e-8)
    ksp.solve(b, x)
    assert ksp.getConvergedReason() > 0
    r = b.duplicate()
    A.mult(x, r)
    r.axpy(-1.0, b)
    assert r.norm() < 1e-6 * b.norm()
    return ksp.getIterationNumber()


@pytest.mark.parametrize("pc_class", ["GCVAEPC", "FSAIPC"])
def test_replaced_operator_of_another_size_and_structure_rebuilds(tiny_poisson, pc_class: str) -> None:
    """One KSP, operators replaced as in multigrid/fieldsplit/Newton loops: each solve needs exactly the
    iterations of a fresh KSP on that operator, and nothing of the earlier structure is kept."""
    opts = {"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {}
    small, large = laplacian_2d(10, comm=PETSc.COMM_SELF, kappa_seed=1), laplacian_2d(17, comm=PETSc.COMM_SELF,
                                                                                      kappa_seed=2)
    # same size as `small`, another structure: a 9-point stencil (the 5-point one plus diagonals)
    nine = laplacian_2d(10, comm=PETSc.COMM_SELF, kappa_seed=1).duplicate(copy=True)
    nine.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    for i in range(9):
        for j in range(9):
            p, q = i * 10 + j, (i + 1) * 10 + j + 1
            nine.setValue(p, q, -0.1, addv=True)
            nine.setValue(q, p, -0.1, addv=True)
            nine.setValue(p, p, 0.2, addv=True)
            nine.setValue(q, q, 0.2, addv=True)
    nine.assemble()
    ksp = python_ksp(small, pc_class, **opts)
    seen = []
    for A in (small, large, nine, small):
        fresh = python_ksp(A, pc_class, **opts)
        want = _solve_iterations(fresh, A)
        if ksp.getOperators()[0].getSizes() != A.getSizes():
            ksp.reset()  # PETSc's own rule for a new size (as PCMG and Newton do): reset, then new operators
        got = _solve_iterations(ksp, A)
        assert got == want, (A.getSize(), got, want)
        ctx = ksp.getPC().getPythonContext()
        assert ctx.G.getSize() == A.getSize()
        seen.append(ctx.stats["reused"])
    assert seen[1] == [] and seen[2] == [], seen  # new size, new structure: nothing reused


@pytest.mark.parametrize("level", [1, 2])
def test_resetup_with_new_values_reuses_and_says_so(capfd, level: int) -> None:
    A = laplacian_2d(12, comm=PETSc.COMM_SELF, kappa_seed=1)
    ksp = python_ksp(A, "FSAIPC", pc_fsai_pattern_level=level)
    _solve_iterations(ksp, A)
    ctx = ksp.getPC().getPythonContext()
    assert ctx.stats["reused"] == []
    A.scale(2.0)
    _solve_iterations(ksp, A)
    # level 1 gathers tril(Â) and FSAI's submatrices through the kept structure; level >= 2 refills the
    # PETSc Mat of Â and the powers' symbolic products, and since the thresholded pattern of Â² comes out
    # the same (a scaled A has the same Â), keeps the pattern and what was built on it
    want = {"ordering", "pattern", "FSAI plan", "G's structure"} if level == 1 else {
        "ordering", "symbolic products", "scaled operator's structure", "pattern", "FSAI plan", "G's structure"}
    assert set(ctx.stats["reused"]) == want
    ksp.view()
    assert "reused from the previous setup (same nonzero structure): ordering" in capfd.readouterr().out


KEPT = "the factor itself (same operator values and options)"


@pytest.mark.parametrize("pc_class", ["FSAIPC", "GCVAEPC"])
def test_resetups_gather_through_positions_kept_for_the_structure(pc_class: str) -> None:
    """3D P1 elasticity in nested-dissection order has more pairs in its rows' A[J, J] (5.5 per nonzero of A
    here) than a first setup keeps positions for (PLAN_BUDGET): the first setup looks them up, a setup with new
    values on the same structure keeps them (RESETUP_PLAN_BUDGET) and later setups gather through them -- every
    factor the one a fresh preconditioner builds."""
    from pcgcvae.bench import assemble_case, benchmark_spec
    from pcgcvae.fsai import PLAN_BUDGET, RESETUP_PLAN_BUDGET
    from pcgcvae.problems import build_problem

    A, _ = assemble_case(build_problem(benchmark_spec("elasticity-3d", 3)))
    ksp = python_ksp(A, pc_class)
    ksp.setUp()
    ctx = ksp.getPC().getPythonContext()
    plan = ctx._pattern_cache["fsai_plan"]
    nnz = int(A.getInfo()["nz_used"])
    assert PLAN_BUDGET * nnz < plan.pairs <= RESETUP_PLAN_BUDGET * nnz and plan.a_positions is None
    assert not plan.few_pairs  # so the GCVAE normalises its rows by scipy's products
    for k, scale in enumerate((2.0, 0.25)):  # new values on the same structure, twice
        A.scale(scale)
        ksp.setOperators(A)
        ksp.setUp()
        assert ctx._pattern_cache["fsai_plan"] is plan and plan.a_positions is not None, k
        assert "FSAI plan" in ctx.stats["reused"] and _same_factor(ksp, A, pc_class, {}), k


def _same_factor(ksp: PETSc.KSP, A: PETSc.Mat, pc_class: str, opts: dict) -> bool:
    """Whether ``ksp``'s G equals the one a fresh preconditioner builds on ``A`` with ``opts``."""
    fresh = python_ksp(A, pc_class, **opts)
    fresh.setUp()
    G, F = ksp.getPC().getPythonContext().G, fresh.getPC().getPythonContext().G
    if G.getSize() != F.getSize():
        return False
    diff = G.copy()
    diff.axpy(-1.0, F, structure=PETSc.Mat.Structure.DIFFERENT)
    return diff.norm() <= 1e-12 * F.norm()


@pytest.mark.parametrize("pc_class", ["FSAIPC", "GCVAEPC"])
def test_resetup_with_the_same_values_keeps_the_factor(tiny_poisson, capfd, pc_class: str) -> None:
    """A re-setup on an operator with the values of the last setup (a form assembled again, a copy of the
    matrix) keeps G as it is and says so; a changed value, an option changed in the options database or
    from Python, or -pc_gcvae_guard_recheck build it again, as a fresh preconditioner would."""
    A = laplacian_2d(12, comm=PETSc.COMM_SELF, kappa_seed=3)
    stem = "pc_gcvae_" if pc_class == "GCVAEPC" else "pc_fsai_"
    opts = {"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {}
    ksp = python_ksp(A, pc_class, **opts)
    ksp.setUp()
    ctx = ksp.getPC().getPythonContext()
    G = ctx.G
    values = G.getValuesCSR()[2].copy()
    A.setValue(0, 0, A.getValue(0, 0))  # assembled again with the same values: PETSc sets the PC up again
    A.assemble()
    ksp.setOperators(A)
    ksp.setUp()
    assert ctx.stats["reused"] == [KEPT] and ctx.G is G and np.array_equal(G.getValuesCSR()[2], values)
    ksp.view()
    assert f"reused from the previous setup (same nonzero structure): {KEPT}" in capfd.readouterr().out
    B = A.duplicate(copy=True)  # another matrix, the same values
    ksp.setOperators(B)
    ksp.setUp()
    assert ctx.stats["reused"] == [KEPT] and ctx.G is G
    v = B.getValue(5, 6)  # one symmetric pair changed
    B.setValue(5, 6, 1.5 * v)
    B.setValue(6, 5, 1.5 * v)
    B.assemble()
    ksp.setUp()
    assert KEPT not in ctx.stats["reused"] and "G's structure" in ctx.stats["reused"]
    assert not np.array_equal(ctx.G.getValuesCSR()[2], values) and _same_factor(ksp, B, pc_class, opts)
    prefix = ksp.getOptionsPrefix()  # an option changed in the database, the same values
    PETSc.Options()[prefix + stem + "pattern_level"] = 2
    ksp.setFromOptions()
    B.setValue(0, 0, B.getValue(0, 0))
    B.assemble()
    ksp.setUp()
    assert KEPT not in ctx.stats["reused"] and ctx.pattern_level == 2
    assert _same_factor(ksp, B, pc_class, {**opts, stem + "pattern_level": 2})
    ctx.pattern_threshold = 0.3  # an option changed from Python
    B.setValue(0, 0, B.getValue(0, 0))
    B.assemble()
    ksp.setUp()
    assert KEPT not in ctx.stats["reused"]
    assert _same_factor(ksp, B, pc_class, {**opts, stem + "pattern_level": 2, stem + "pattern_threshold": 0.3})
    if pc_class == "GCVAEPC":  # the guard asked to measure every setup: nothing kept
        ctx.guard_recheck = True
        B.setValue(0, 0, B.getValue(0, 0))
        B.assemble()
        ksp.setUp()
        assert KEPT not in ctx.stats["reused"]


@pytest.mark.parametrize("pc_class", ["FSAIPC", "GCVAEPC"])
def test_settings_are_the_options_alone(tiny_poisson, pc_class: str) -> None:
    """What a kept factor is compared by holds the options only: a setup (with the guard, or falling back
    to FSAI for a block size the model does not know) leaves it unchanged."""
    for bs, extra in ((1, {}), (2, {"pc_gcvae_fallback": "fsai"})):
        A = laplacian_2d(8, comm=PETSc.COMM_SELF, kappa_seed=2)
        A.setBlockSize(bs)
        opts = {"pc_gcvae_model": str(tiny_poisson), **extra} if pc_class == "GCVAEPC" else {}
        ksp = python_ksp(A, pc_class, **opts)
        ctx = ksp.getPC().getPythonContext()
        before = ctx._settings()
        ksp.setUp()
        assert ctx._settings() == before
        assert ("fallback_reason" in dict(before)) is False


def test_matrix_family() -> None:
    assert matrix_family("seqaij") == "aij"
    assert matrix_family("mpiaij") == "aij"
    assert matrix_family("seqaijperm") == "aijperm"
    assert matrix_family("mpiaijsell") == "aijsell"
    assert matrix_family("seqaijcusparse") == "aijcusparse"
    assert matrix_family("aijkokkos") == "aijkokkos"
    assert matrix_family("seqbaij") == "aij" and matrix_family("mpisbaij") == "aij"


@pytest.mark.parametrize("mtype", ["aijsell", "aijperm", "baij", "sbaij"])
@pytest.mark.parametrize("pc_class", ["GCVAEPC", "FSAIPC"])
def test_factor_lives_in_the_operators_type_family(tiny_poisson, mtype: str, pc_class: str) -> None:
    """G and Gᵀ take the operator's AIJ variant, and the solve is the same as with plain AIJ."""
    opts = {"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {}
    A = laplacian_2d(14, comm=PETSc.COMM_SELF, kappa_seed=4)
    A.setOption(PETSc.Mat.Option.SYMMETRIC, True)  # MatConvert to sbaij asks for it
    B = A.convert(mtype, PETSc.Mat())
    if mtype == "sbaij":
        B.setOption(PETSc.Mat.Option.GETROW_UPPERTRIANGULAR, True)
    want = _solve_iterations(python_ksp(A, pc_class, **opts), A)
    ksp = python_ksp(B, pc_class, **opts)
    got = _solve_iterations(ksp, B)
    ctx = ksp.getPC().getPythonContext()
    expected = "seq" + mtype if mtype.startswith("aij") else "seqaij"
    assert ctx.G.getType() == expected and ctx.GT.getType() == expected, (ctx.G.getType(), ctx.GT.getType())
    assert B.getType() == "seq" + mtype  # the operator keeps its own type (it is never converted in place)
    assert got == want


def _block_diagonal(*blocks: PETSc.Mat) -> PETSc.Mat:
    """diag(blocks) as one sequential AIJ matrix."""
    nest = PETSc.Mat().createNest([[b if i == j else None for j in range(len(blocks))] for i, b in enumerate(blocks)],
                                  comm=PETSc.COMM_SELF)
    out = nest.convert(PETSc.Mat.Type.AIJ, PETSc.Mat())
    nest.destroy()
    return out


_FIELDSPLITS = iter(range(10**6))


def _fieldsplit_ksp(A: PETSc.Mat, first: int, pc_class: str, opts: dict) -> PETSc.KSP:
    """CG with an additive two-field PCFIELDSPLIT, each field preconditioned by ``pc_class`` (preonly)."""
    prefix = f"fs{next(_FIELDSPLITS)}_"
    o = PETSc.Options()
    o[prefix + "pc_fieldsplit_type"] = "additive"
    for name in ("a", "b"):
        full = {"ksp_type": "preonly", "pc_type": "python", "pc_python_type": f"pcgcvae.{pc_class}", **opts}
        for k, v in full.items():
            o[f"{prefix}fieldsplit_{name}_{k}"] = v
    ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
    ksp.setOptionsPrefix(prefix)
    ksp.setType("cg")
    pc = ksp.getPC()
    pc.setType("fieldsplit")
    n = A.getSize()[0]
    pc.setFieldSplitIS(("a", PETSc.IS().createStride(first, 0, 1, comm=PETSc.COMM_SELF)),
                       ("b", PETSc.IS().createStride(n - first, first, 1, comm=PETSc.COMM_SELF)))
    ksp.setOperators(A)
    ksp.setFromOptions()
    return ksp


@pytest.mark.parametrize("pc_class", ["GCVAEPC", "FSAIPC"])
def test_replaced_operator_inside_fieldsplit_rebuilds_only_what_changed(tiny_poisson, pc_class: str) -> None:
    """Inside PCFIELDSPLIT the sub-PCs see their blocks replaced: new values, then one block of another
    structure. Every solve needs exactly a fresh KSP's iterations; the block whose structure changed
    reuses nothing, the other reuses its structure."""
    opts = {"pc_gcvae_model": str(tiny_poisson)} if pc_class == "GCVAEPC" else {}
    m = 10
    a1, a2 = laplacian_2d(m, comm=PETSc.COMM_SELF, kappa_seed=1), laplacian_2d(8, comm=PETSc.COMM_SELF, kappa_seed=2)
    nine = a1.duplicate(copy=True)  # same size as a1, the 5-point structure plus one diagonal
    nine.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, False)
    for i in range(m - 1):
        for j in range(m - 1):
            p, q = i * m + j, (i + 1) * m + j + 1
            for r, c, v in ((p, q, -0.1), (q, p, -0.1), (p, p, 0.2), (q, q, 0.2)):
                nine.setValue(r, c, v, addv=True)
    nine.assemble()
    scaled = a1.duplicate(copy=True)
    scaled.scale(3.0)
    ops = [_block_diagonal(a1, a2), _block_diagonal(scaled, a2), _block_diagonal(nine, a2)]
    ksp = _fieldsplit_ksp(ops[0], m * m, pc_class, opts)
    reused = []
    for A in ops:
        want = _solve_iterations(_fieldsplit_ksp(A, m * m, pc_class, opts), A)
        got = _solve_iterations(ksp, A)
        assert got == want, (got, want)
        subs = ksp.getPC().getFieldSplitSubKSP()
        ctxs = [s.getPC().getPythonContext() for s in subs]
        assert [c.G.getSize()[0] for c in ctxs] == [m * m, 64]
        reused.append([set(c.stats["reused"]) for c in ctxs])
    assert reused[0] == [set(), set()]
    assert "ordering" in reused[1][0] and "G's structure" in reused[1][0]  # new values: the structure is kept
    assert reused[2][0] == set(), reused  # another structure: rebuilt from scratch
    assert reused[2][1] == {KEPT}, reused  # the untouched block (the same values again): its factor kept


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("pc_class", ["FSAIPC", "GCVAEPC"])
def test_repeated_resetups_with_new_values_equal_fresh_factors(tiny_poisson, pc_class: str, level: int) -> None:
    """Setups 2 to 5 on the same structure with new values (the second keeps the reordered structure,
    the factor's layout and FSAI's plan; the later ones only gather through them) give exactly the factor a
    fresh preconditioner builds from the same values.  At level 2 the thresholded pattern of Â² depends on
    the values: kept while it comes out the same, rebuilt (on the kept symbolic products) when a large
    shift drops Â²'s small entries -- the factor is a fresh one's either way."""
    A = laplacian_2d(14, comm=PETSc.COMM_SELF, kappa_seed=6)
    stem = "pc_gcvae_" if pc_class == "GCVAEPC" else "pc_fsai_"
    opts = {"pc_gcvae_model": str(tiny_poisson), "pc_gcvae_guard_threshold": -1} if pc_class == "GCVAEPC" else {}
    opts[stem + "pattern_level"] = level
    ksp = python_ksp(A, pc_class, **opts)
    ksp.setUp()
    nnz_before = ksp.getPC().getPythonContext().G.getInfo()["nz_used"]
    for k in range(4):
        A.scale(1.5)
        A.shift({0: 0.0, 1: 0.2, 2: 0.0, 3: 20.0}[k])  # a scaling keeps Â (and Â²'s thresholded pattern)
        ksp.setOperators(A)
        ksp.setUp()
        fresh = python_ksp(A, pc_class, **opts)
        fresh.setUp()
        G, F = ksp.getPC().getPythonContext().G, fresh.getPC().getPythonContext().G
        diff = G.copy()
        diff.axpy(-1.0, F)
        assert diff.norm() <= 1e-12 * F.norm(), (k, diff.norm())
        reused = set(ksp.getPC().getPythonContext().stats["reused"])
        assert "ordering" in reused and ("G's structure" in reused) == ("pattern" in reused), reused
        if pc_class == "GCVAEPC":  # the graph's edges and counts are kept with the pattern
            assert ("graph topology" in reused) == ("pattern" in reused), reused
        if level == 2:
            assert "symbolic products" in reused, reused
            assert ("pattern" in reused) == (G.getInfo()["nz_used"] == nnz_before), (k, reused)
            if k != 1:  # kept after a pure scaling; the shift of 20 drops entries of Â²
                assert ("pattern" in reused) == (k != 3), (k, reused)
        else:
            assert "pattern" in reused, reused
        nnz_before = G.getInfo()["nz_used"]
