"""The mathematics of the factored SPAI: SPD by construction, Jacobi as the
identity generator, FSAI against a dense reference, apply = Gᵀ(Gx)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dense, laplacian_2d, python_ksp, random_spd
from petsc4py import PETSc

from pcgcvae.ordering import local_permutation
from pcgcvae.petsc_csr import mat_to_csr
from pcgcvae.training.checkpoint import save_checkpoint
from pcgcvae.training.model import GCVAE, GCVAEConfig


def make_pc(A: PETSc.Mat, pc_class: str, **options) -> PETSc.PC:
    pc = python_ksp(A, pc_class, **options).getPC()
    pc.setUp()
    return pc


def factor_dense(pc: PETSc.PC) -> np.ndarray:
    return dense(pc.getPythonContext().G)


def fsai_dense_reference(A: np.ndarray, level: int = 1) -> np.ndarray:
    """Row by row with dense linear algebra: pattern tril(A) (level 1)."""
    n = len(A)
    pattern = np.tril(A != 0) if level == 1 else np.tril(np.abs(A @ A) > 0)
    G = np.zeros_like(A)
    for i in range(n):
        J = np.flatnonzero(pattern[i])
        y = np.linalg.solve(A[np.ix_(J, J)], (J == i).astype(float))
        G[i, J] = y / np.sqrt(y[J == i])
    return G


def local_order(A: PETSc.Mat, ordering: str) -> np.ndarray:
    """The PC's permutation of a serial matrix (the identity for natural)."""
    perm = local_permutation(mat_to_csr(A), ordering, A.getBlockSize())
    return np.arange(A.getSize()[0]) if perm is None else perm


def reference_in_order(A: PETSc.Mat, ordering: str, level: int = 1) -> np.ndarray:
    """The dense FSAI reference built on P A Pᵀ, relabelled back to A's numbering."""
    perm = local_order(A, ordering)
    ref = np.zeros((len(perm), len(perm)))
    ref[np.ix_(perm, perm)] = fsai_dense_reference(dense(A)[np.ix_(perm, perm)], level)
    return ref


@pytest.mark.parametrize("ordering", ["natural", "nd"])
@pytest.mark.parametrize("seed", range(4))
def test_fsai_matches_dense_reference(seed: int, ordering: str) -> None:
    A = random_spd(40, 0.08, seed)
    G = factor_dense(make_pc(A, "FSAIPC", pc_fsai_ordering=ordering))
    assert np.allclose(G, reference_in_order(A, ordering), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ordering", ["natural", "nd"])
def test_fsai_level2_matches_dense_reference(ordering: str) -> None:
    A = laplacian_2d(6, comm=PETSc.COMM_SELF, kappa_seed=1)
    G = factor_dense(make_pc(A, "FSAIPC", pc_fsai_pattern_level=2, pc_fsai_pattern_threshold=0.0,
                             pc_fsai_ordering=ordering))
    assert np.allclose(G, reference_in_order(A, ordering, level=2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_factor_spd_for_random_spd_inputs(seed: int, tiny_poisson) -> None:
    """G is lower triangular in the PC's ordering (nd: FSAIPC's default and the tiny model's)."""
    A = random_spd(50, 0.1, seed)
    perm = local_order(A, "nd")
    for cls, opts in (("FSAIPC", {}), ("GCVAEPC", {"pc_gcvae_model": str(tiny_poisson)})):
        G = factor_dense(make_pc(A, cls, **opts))
        Gp = G[np.ix_(perm, perm)]
        assert np.allclose(Gp, np.tril(Gp))
        assert G.diagonal().min() > 0
        M = G.T @ G
        assert np.allclose(M, M.T)
        assert np.linalg.eigvalsh(M).min() > 0


def test_identity_generator_is_exactly_jacobi(tmp_path) -> None:
    model = GCVAE(GCVAEConfig(hidden=8, decoder_layers=1, encoder_layers=1, prior_layers=1))
    # The decoder's output layer starts at zero: G = I on the scaled operator.
    path = tmp_path / "identity.pt"
    save_checkpoint(path, model, {"family": "poisson", "block_sizes": [1], "pattern_levels": [1, 2]})
    A = laplacian_2d(8, comm=PETSc.COMM_SELF, kappa_seed=4)
    # The guard is off: this tests the generator, and the identity factor is exactly the kind
    # of factor the guard exists to replace (its Kaporin gap to FSAI is about 0.19).
    pc = make_pc(A, "GCVAEPC", pc_gcvae_model=str(path), pc_gcvae_guard_threshold=-1)
    jac = PETSc.PC().create(comm=PETSc.COMM_SELF)
    jac.setOperators(A)
    jac.setType("jacobi")
    jac.setUp()
    x = A.createVecRight()
    x.setRandom()
    y1, y2 = x.duplicate(), x.duplicate()
    pc.apply(x, y1)
    jac.apply(x, y2)
    assert np.allclose(y1.array, y2.array, rtol=1e-14, atol=0)


def test_apply_equals_gt_g_x(tiny_poisson) -> None:
    A = laplacian_2d(9, comm=PETSc.COMM_SELF, kappa_seed=2)
    for cls, opts in (("FSAIPC", {"pc_fsai_pattern_level": 2}), ("GCVAEPC", {"pc_gcvae_model": str(tiny_poisson)})):
        pc = make_pc(A, cls, **opts)
        G = factor_dense(pc)
        x = A.createVecRight()
        x.setRandom()
        y = x.duplicate()
        pc.apply(x, y)
        assert np.allclose(y.array, G.T @ (G @ x.array), rtol=1e-12, atol=1e-14)
        yt = x.duplicate()
        pc.applyTranspose(x, yt)
        assert np.allclose(yt.array, y.array)
        X = PETSc.Mat().createDense((A.getSize()[0], 3), comm=PETSc.COMM_SELF)
        X.setUp()
        X.getDenseArray()[:] = np.random.default_rng(0).standard_normal((A.getSize()[0], 3))
        X.assemble()
        Y = X.duplicate()
        pc.matApply(X, Y)
        assert np.allclose(Y.getDenseArray(), G.T @ (G @ X.getDenseArray()), rtol=1e-12, atol=1e-14)


def test_normalised_rows_have_unit_diagonal_of_gagt(tiny_poisson) -> None:
    A = laplacian_2d(7, comm=PETSc.COMM_SELF, kappa_seed=5)
    for cls, opts in (("FSAIPC", {}), ("GCVAEPC", {"pc_gcvae_model": str(tiny_poisson)})):
        G = factor_dense(make_pc(A, cls, **opts))
        assert np.allclose(np.diag(G @ dense(A) @ G.T), 1.0, rtol=1e-10)


def test_torch_and_run_time_row_normalisation_agree(tiny_poisson) -> None:
    from pcgcvae.csr import normalise_rows as normalise_rows_local
    from pcgcvae.csr import scale_symmetric
    from pcgcvae.petsc_csr import mat_to_csr
    from pcgcvae.training.checkpoint import load_checkpoint
    from pcgcvae.training.graph import build_graph
    from pcgcvae.training.quality import normalise_rows

    A = laplacian_2d(7, comm=PETSc.COMM_SELF, kappa_seed=6)
    ahat, _ = scale_symmetric(mat_to_csr(A))
    s = ahat.lower()
    model, _ = load_checkpoint(tiny_poisson)
    data = build_graph(ahat, s, triplets=True)
    raw = model.generate(data, use_mean=True)[0]
    g_torch = normalise_rows(raw.double(), data).numpy()
    g_local = normalise_rows_local(s.with_data(raw.double().numpy()), ahat)
    assert np.allclose(g_torch, g_local, rtol=1e-5)  # the torch triplets hold float32 values of Â
    for chunk in (1, 5, 48):  # row blocks of any size give the same values
        assert np.allclose(normalise_rows_local(s.with_data(raw.double().numpy()), ahat, chunk=chunk), g_local,
                           rtol=1e-13, atol=0)
    assert torch.all(raw[data.s_diag] > 0)


def test_structure_digest_tells_structures_apart() -> None:
    """The caches compare nonzero structures by digest: equal arrays agree (whatever their memory), any
    changed index or length does not."""
    from pcgcvae.csr import structure_digest

    indptr, indices = np.array([0, 2, 3, 5]), np.array([0, 1, 1, 0, 2])
    d = structure_digest(indptr, indices)
    assert d == structure_digest(indptr.copy(), np.ascontiguousarray(indices[::-1][::-1]))
    changed = indices.copy()
    changed[3] = 1
    assert structure_digest(indptr, changed) != d
    assert structure_digest(indptr[:-1], indices[:-2]) != d
    assert structure_digest(np.array([0, 2]), np.array([0, 1, 1, 0, 2])) != structure_digest(np.array([0, 2, 1]),
                                                                                             np.array([0, 1, 1, 0]))


def test_csr_indices_are_int32_and_entry_keys_do_not_overflow() -> None:
    """Index arrays are PETSc's int32 (no copies), yet keys row * n + col of a 70 000-row matrix
    (beyond 2^31) are exact, lookups find the last entries, and the graph's edge keys for a pattern
    outside A (level >= 2) are formed without overflow."""
    from pcgcvae.csr import CSR
    from pcgcvae.features import build_arrays

    n = 70_000
    import scipy.sparse as sp

    a = sp.diags([-0.25 * np.ones(n - 1), np.ones(n), -0.25 * np.ones(n - 1)], [-1, 0, 1], format="csr")
    a.sort_indices()
    csr = CSR(a.indptr, a.indices, a.data)
    assert csr.indptr.dtype == np.int32 and csr.indices.dtype == np.int32
    assert int(csr.keys()[-1]) == (n - 1) * n + n - 1
    assert csr.lookup(np.array([n - 1, n - 1, 0]), np.array([n - 2, n - 1, n - 1])).tolist() == [-0.25, 1.0, 0.0]
    lower = sp.tril(a, format="lil")
    lower[n - 1, 0] = 1.0  # an entry of S outside pattern(A): the union branch
    lower = sp.csr_matrix(lower)
    lower.sort_indices()
    s = CSR(lower.indptr, lower.indices, np.ones(lower.nnz))
    arrays = build_arrays(csr, s, a2_on_s=np.zeros(s.nnz))
    src, dst = arrays.edge_index
    assert arrays.num_edges == 2 * (n - 1) + 2  # A's off-diagonal entries, the new entry and its mirror
    assert {(int(src[k]), int(dst[k])) for k in np.flatnonzero((src == 0) & (dst == n - 1))} == {(0, n - 1)}
    assert {(int(src[k]), int(dst[k])) for k in np.flatnonzero((src == n - 1) & (dst == 0))} == {(n - 1, 0)}


def test_csr_lookup_contains_and_graph_union_match_dense_references() -> None:
    """CSR.lookup (scipy's indexing, in chunks), CSR.positions, CSR.contains, CSR.diagonal, take_rows on a slice and the
    graph's union pattern(A) ∪ S ∪ Sᵀ (scipy's sum) against dense matrices and Python sets."""
    import scipy.sparse as sp

    from pcgcvae.csr import CSR
    from pcgcvae.features import graph_topology

    n = 300
    r = sp.random(n, n, density=0.02, random_state=2, format="csr")
    a_sp = (r + r.T + 10 * sp.eye(n)).tocsr()
    a_sp.sort_indices()
    lower = sp.tril(sp.random(n, n, density=0.03, random_state=3) + sp.eye(n), format="csr")
    lower.sort_indices()
    a, s = CSR(a_sp.indptr, a_sp.indices, a_sp.data), CSR(lower.indptr, lower.indices, np.ones(lower.nnz))
    dense_a = a_sp.toarray()
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, n, 5000), rng.integers(0, n, 5000)
    np.testing.assert_array_equal(a.lookup(rows, cols, chunk=777), dense_a[rows, cols])
    np.testing.assert_array_equal(a.lookup(rows[:, None], cols[None, :8]), dense_a[rows[:, None], cols[None, :8]])
    stored = sp.csr_matrix((np.ones(a_sp.nnz), a_sp.indices, a_sp.indptr), shape=(n, n)).toarray() > 0
    pos = a.positions(rows, cols, chunk=777)  # where each entry's value lies in A's data, -1 where none is stored
    np.testing.assert_array_equal(pos >= 0, stored[rows, cols])
    np.testing.assert_array_equal(np.where(pos >= 0, a.data[np.maximum(pos, 0)], 0.0), dense_a[rows, cols])
    np.testing.assert_array_equal(a.diagonal(), np.diag(dense_a))
    assert a.contains(a.lower()) and not s.contains(a) and not a.contains(s)
    part = a.take_rows(np.arange(40, 90))
    np.testing.assert_array_equal(sp.csr_array((part.data, part.indices, part.indptr), shape=(50, n)).toarray(),
                                  dense_a[40:90])
    assert a.take_rows(np.arange(n)) is a
    topology = graph_topology(a, s)
    edges, pos = topology.edge_index, topology.edge_a_pos
    coo_a, coo_s = a_sp.tocoo(), lower.tocoo()
    in_a = set(zip(coo_a.row, coo_a.col))
    union = in_a | set(zip(coo_s.row, coo_s.col)) | set(zip(coo_s.col, coo_s.row))
    want = sorted((i, j) for i, j in union if i != j)
    assert list(zip(edges[1].tolist(), edges[0].tolist())) == want
    assert (pos >= 0).tolist() == [(i, j) in in_a for i, j in want]  # where each edge's value lies in A
    np.testing.assert_array_equal(np.where(pos >= 0, a.data[np.maximum(pos, 0)], 0.0),
                                  [dense_a[i, j] for i, j in want])


@pytest.mark.parametrize("level,block_size", [(1, 1), (2, 1), (2, 2)])
def test_graph_topology_kept_for_new_values_gives_the_fresh_arrays(level: int, block_size: int) -> None:
    """build_arrays on a topology kept from other values of the same structures gives exactly the arrays
    built from scratch (every feature, edge and pattern array); a topology of another structure is refused."""
    import scipy.sparse as sp

    from pcgcvae.csr import CSR, scale_symmetric
    from pcgcvae.features import build_arrays, graph_topology
    from pcgcvae.pattern import factor_pattern
    from pcgcvae.petsc_csr import csr_to_mat

    def operator(seed: int) -> CSR:
        r = sp.random(200, 200, density=0.03, random_state=7, format="csr")  # one structure for every seed
        r.data = np.random.default_rng(seed).uniform(-1.0, 1.0, r.nnz)
        m = (r + r.T + 12 * sp.eye(200)).tocsr()
        m.sort_indices()
        return scale_symmetric(CSR(m.indptr, m.indices, m.data))[0]

    a1, a2 = operator(1), operator(2)
    s1, _ = factor_pattern(a1, csr_to_mat(a1), level, 0.0)  # threshold 0: the same pattern for both values
    s2, sq2 = factor_pattern(a2, csr_to_mat(a2), level, 0.0)
    assert np.array_equal(s1.indices, s2.indices) and np.array_equal(s1.indptr, s2.indptr)
    kept = graph_topology(a1, s1, block_size)
    fresh, reused = build_arrays(a2, s2, sq2, block_size), build_arrays(a2, s2, sq2, block_size, topology=kept)
    assert reused.topology is kept
    for name in ("x", "edge_index", "edge_value", "edge_a2", "s_index", "s_value", "s_a2", "s_diag"):
        want, got = getattr(fresh, name), getattr(reused, name)
        assert (want is None and got is None) or np.array_equal(want, got), name
    np.testing.assert_array_equal(fresh.edge_features(), reused.edge_features())
    with pytest.raises(ValueError, match="topology"):
        build_arrays(a2, a2.lower() if level > 1 else s2, block_size=block_size + 1, topology=kept)


@pytest.mark.parametrize("level", [1, 2])
def test_row_normalisation_through_the_fsai_plan_matches_sparse_products(level: int) -> None:
    """normalised_on_plan (each row's A[J, J] read through the FSAIPlan's positions; some pairs of J are not
    coupled in A) gives the values normalise_rows gives with scipy products, and re-running FSAI on a
    plan gives FSAI again."""
    from pcgcvae.csr import CSR, normalise_rows, scale_symmetric
    from pcgcvae.fsai import FSAIPlan, fsai_values, normalised_on_plan
    from pcgcvae.pattern import factor_pattern
    from pcgcvae.petsc_csr import csr_to_mat

    A = laplacian_2d(20, comm=PETSc.COMM_SELF, kappa_seed=4)
    ahat, _ = scale_symmetric(mat_to_csr(A))
    s, _ = factor_pattern(ahat, csr_to_mat(ahat), level, 0.0)
    plan = FSAIPlan(ahat, s)
    assert plan.a_positions is not None and any(plan.missing)  # the 5-point stencil leaves pairs of J uncoupled
    g = np.random.default_rng(level).uniform(0.1, 1.0, s.nnz)
    np.testing.assert_allclose(normalised_on_plan(ahat, s, g, plan), normalise_rows(s.with_data(g), ahat),
                               rtol=1e-12)
    f = fsai_values(ahat, s, plan=plan)
    np.testing.assert_allclose(fsai_values(ahat, s), f, rtol=1e-12)
    late = FSAIPlan(ahat, s, budget=0)  # no positions at first (over its budget): looked up per setup
    assert late.a_positions is None and late.pairs == plan.pairs and late.few_pairs and plan.few_pairs
    np.testing.assert_array_equal(fsai_values(ahat, s, plan=late), f)
    assert not late.keep_positions(ahat, s, budget=0) and late.a_positions is None
    assert late.keep_positions(ahat, s) and late.missing == plan.missing  # kept later, within RESETUP_PLAN_BUDGET
    assert all(np.array_equal(x, y) for x, y in zip(late.a_positions, plan.a_positions, strict=True))
    np.testing.assert_array_equal(fsai_values(ahat, s, plan=late), f)
    np.testing.assert_allclose(normalised_on_plan(ahat, s, f, plan), f, rtol=1e-10)
    assert isinstance(s, CSR)
