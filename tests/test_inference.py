"""Torch-free inference: the NumPy forward pass equals the torch one, the exported
``.npz`` models round-trip and refuse what they cannot trust, and the preconditioner
runs (from Python and from C) where ``import torch`` fails."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from test_c_program import ex2, its, run_ex2  # noqa: F401  (ex2: the compiled C program, a fixture)

import pcgcvae.inference as inference
import pcgcvae.training.model as torch_model
from pcgcvae.csr import CSR, scale_symmetric
from pcgcvae.errors import CheckpointError
from pcgcvae.features import build_arrays
from pcgcvae.inference import (
    ARCHITECTURE_FIELDS,
    FORMAT,
    FORMAT_VERSION,
    HEADER_KEY,
    NumpyGCVAE,
    inference_weight_shapes,
    load_inference_model,
    read_inference_model,
    save_inference_model,
)
from pcgcvae.models_registry import SHIPPED_MODELS, shipped_model_path
from pcgcvae.training.checkpoint import load_model, save_checkpoint
from pcgcvae.training.export import checkpoint_to_numpy, export
from pcgcvae.training.export import main as export_main
from pcgcvae.training.graph import build_graph
from pcgcvae.training.model import GCVAE, GCVAEConfig

REPO = Path(__file__).parent.parent
META = {"family": "poisson", "block_sizes": [1, 2], "pattern_levels": [1, 2], "ordering": "nd",
        "heldout": {"summary": {"gcvae/fsai": [0.97, 0.96]}}, "training": {"epochs": 3}}


# -- graphs and models ---------------------------------------------------------------
def random_problem(n: int, seed: int, extra: float = 0.0, identity_rows: int = 2) -> tuple[CSR, CSR, np.ndarray]:
    """A random scaled SPD operator Â (some identity rows: nodes without edges), its lower
    pattern S (with ``extra`` random entries outside A when > 0) and random Â² values on S."""
    rng = np.random.default_rng(seed)
    b = sp.random(n, n, density=4.0 / n, random_state=rng, format="csr")
    a = (b + b.T).tolil()
    for k in rng.choice(n, identity_rows, replace=False):
        a[k, :] = 0
        a[:, k] = 0
    a = a.tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    a = a + sp.diags(np.abs(a).sum(1).A1 + rng.uniform(0.1, 1.0, n))
    a = sp.csr_array(a)
    a.sort_indices()
    ahat, _ = scale_symmetric(CSR(a.indptr, a.indices, a.data))
    pat = sp.tril(sp.csr_array((np.ones(ahat.nnz), ahat.indices, ahat.indptr), shape=(n, n)))
    if extra:
        pat = pat + sp.tril(sp.random(n, n, density=extra, random_state=rng, format="csr"), -1)
    pat = sp.csr_array(pat)
    pat.sort_indices()
    s = CSR(pat.indptr, pat.indices, np.zeros(pat.nnz))
    s = s.with_data(ahat.lookup(s.rows(), s.indices))
    return ahat, s, rng.uniform(-0.5, 0.5, s.nnz)


def firedrake_problem(family: str, size: int, level: int) -> tuple[CSR, CSR, np.ndarray | None, int]:
    """A real finite-element graph: Poisson P1 (block size 1) or 2D elasticity (block size 2)."""
    from pcgcvae.pattern import factor_pattern
    from pcgcvae.petsc_csr import csr_to_mat, mat_to_csr
    from pcgcvae.problems import ProblemSpec, build_problem

    params = {"kappa": "lognormal", "sigma": 1.5, "corr": 0.1} if family == "poisson" else {}
    spec = ProblemSpec(family, size, degree=1, mesh="perturbed", seed=3, params=params)
    problem = build_problem(spec)
    ahat, _ = scale_symmetric(mat_to_csr(problem.assemble_matrix()))
    s, a2 = factor_pattern(ahat, csr_to_mat(ahat), level, 0.02)
    return ahat, s, a2, problem.block_size


@pytest.fixture(scope="module")
def real_graphs() -> dict:
    return {(fam, level): firedrake_problem(fam, 10, level) for fam in ("poisson", "elasticity") for level in (1, 2)}


def random_model(seed: int, **config) -> GCVAE:
    """A randomly initialised GCVAE whose zero-initialised output layers are perturbed too
    (otherwise G = I and the prior N(0, I) whatever the trunks compute)."""
    torch.manual_seed(seed)
    model = GCVAE(GCVAEConfig(**{"hidden": 16, "decoder_layers": 3, "prior_layers": 2, **config}))
    with torch.no_grad():
        for p in model.factor_head.out.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        if model.config.conditional_prior:
            for p in model.prior_head.lin.parameters():
                p.copy_(0.5 * torch.randn_like(p))
    return model.eval()


def to_numpy(model: GCVAE) -> NumpyGCVAE:
    arch = model.config.to_dict()
    state = model.state_dict()
    return NumpyGCVAE({k: state[k].numpy() for k in inference_weight_shapes(arch)}, arch)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 2e-5) -> None:
    """Equal to float32 accuracy: relative to each entry, and to the array's scale near zero."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def fsai_base(model: GCVAE, ahat: CSR, s: CSR) -> np.ndarray | None:
    """FSAI's values on S for a residual model (what it corrects), else None."""
    from pcgcvae.fsai import fsai_values

    return fsai_values(ahat, s) if model.config.residual else None


def spectral_input(model: GCVAE, ahat: CSR, s: CSR, base: np.ndarray | None) -> float | None:
    """The spectral gate's input for a model with one (what GCVAEPC computes), else None."""
    from pcgcvae.spectrum import spectral_feature

    return spectral_feature(ahat, s, base) if model.config.spectral_gate else None


def compare(model: GCVAE, net: NumpyGCVAE, ahat: CSR, s: CSR, a2: np.ndarray | None, bs: int, seed: int) -> None:
    """Prior, decoder on a fixed z, generate (mean and sampled) of both implementations agree (a residual
    model corrects FSAI's values on S, given to both)."""
    base = fsai_base(model, ahat, s)
    phi = spectral_input(model, ahat, s, base)
    data = build_graph(ahat, s, a2_on_s=a2, block_size=bs, target=base)
    if phi is not None:
        data.spectral = torch.tensor([phi])
    arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=bs)
    with torch.no_grad():
        mu_t, logvar_t = model.prior_params(data)
        mu, logvar = net.prior_params(arrays)
        assert_close(mu, mu_t.numpy())
        assert_close(logvar, logvar_t.numpy())
        z = torch.randn(ahat.n, model.config.latent, generator=torch.Generator().manual_seed(seed))
        assert_close(net.decode(arrays, z.numpy(), base=base, spectral=phi), model.decode(data, z).numpy())
    (mean_np,) = net.generate(arrays, use_mean=True, base=base, spectral=phi)
    (mean_t,) = model.generate(data, use_mean=True)
    assert_close(mean_np, mean_t.numpy())
    assert np.all(mean_np[arrays.s_diag] > 0)
    # sampled latents: z = mu + exp(logvar / 2) eps, eps from the generator given
    samples = net.generate(arrays, samples=2, rng=np.random.default_rng(seed), base=base, spectral=phi)
    rng = np.random.default_rng(seed)
    for got in samples:
        eps = rng.standard_normal(mu.shape, dtype=np.float32)
        z = torch.from_numpy(mu_t.numpy() + np.exp(0.5 * logvar_t.numpy()) * eps)
        with torch.no_grad():
            assert_close(got, model.decode(data, z).numpy(), rtol=5e-5)
    assert not np.array_equal(samples[0], samples[1])


# -- (a) NumPy forward == torch forward ----------------------------------------------------
def test_features_are_the_graphs_tensors() -> None:
    """build_graph wraps build_arrays' arrays (same values; the features not copied); edges sorted by target."""
    ahat, s, a2 = random_problem(60, seed=1, extra=0.05)
    arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=2)
    data = build_graph(ahat, s, a2_on_s=a2, block_size=2)
    for key in ("x", "edge_index", "edge_attr", "s_index", "s_attr", "s_diag"):
        got = getattr(arrays, key)
        assert np.array_equal(got, getattr(data, key).numpy()), key
    assert arrays.x.dtype == arrays.edge_attr.dtype == arrays.s_attr.dtype == np.float32
    # int32 indices at run time (half the memory), int64 tensors for torch_geometric
    assert arrays.edge_index.dtype == arrays.s_index.dtype == np.int32 and arrays.s_diag.dtype == bool
    assert data.edge_index.numpy().dtype == data.s_index.numpy().dtype == np.int64
    keys = arrays.edge_index[1].astype(np.int64) * ahat.n + arrays.edge_index[0]
    assert np.all(np.diff(keys) > 0)  # target-major, then source, no duplicates
    assert arrays.num_nodes == ahat.n and arrays.num_edges == arrays.edge_attr.shape[0]


@pytest.mark.parametrize("config", [{}, {"prior_layers": 1, "latent": 3}, {"conditional_prior": False}])
@pytest.mark.parametrize("extra", [0.0, 0.04])
def test_random_graphs(config: dict, extra: float) -> None:
    model = random_model(7, **config)
    net = to_numpy(model)
    for seed in (0, 1):
        ahat, s, a2 = random_problem(80 + 17 * seed, seed=seed, extra=extra)
        compare(model, net, ahat, s, a2 if extra else None, bs=1 + seed, seed=seed)


def to_float64(model: GCVAE, data):
    """A float64 copy of the torch model and of the graph's float tensors."""
    import copy

    data = copy.copy(data)
    data.x, data.edge_attr, data.s_attr = data.x.double(), data.edge_attr.double(), data.s_attr.double()
    return copy.deepcopy(model).double(), data


def rel_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def compare_float64(model: GCVAE, ahat: CSR, s: CSR, a2: np.ndarray | None, bs: int, seed: int) -> None:
    """In float64 the NumPy prior, decoder and generate (mean) equal torch's to 1e-10 (relative)."""
    arch = model.config.to_dict()
    state = model.state_dict()
    net = NumpyGCVAE({k: state[k].double().numpy() for k in inference_weight_shapes(arch)}, arch, dtype=np.float64)
    base = fsai_base(model, ahat, s)
    model64, data = to_float64(model, build_graph(ahat, s, a2_on_s=a2, block_size=bs, target=base))
    if base is not None:
        data.target = torch.from_numpy(base)
    phi = spectral_input(model, ahat, s, base)
    if phi is not None:
        data.spectral = torch.tensor([phi], dtype=torch.float64)
    arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=bs)
    with torch.no_grad():
        mu_t, logvar_t = model64.prior_params(data)
        mu, logvar = net.prior_params(arrays)
        assert mu.dtype == np.float64
        if model.config.conditional_prior:
            assert rel_diff(mu, mu_t.numpy()) <= 1e-10
            assert rel_diff(logvar, logvar_t.numpy()) <= 1e-10
        z = torch.randn(ahat.n, model.config.latent, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        assert rel_diff(net.decode(arrays, z.numpy(), base=base, spectral=phi),
                        model64.decode(data, z).numpy()) <= 1e-10
    (mean_np,) = net.generate(arrays, use_mean=True, base=base, spectral=phi)
    (mean_t,) = model64.generate(data, use_mean=True)
    assert mean_np.dtype == np.float64
    assert rel_diff(mean_np, mean_t.numpy()) <= 1e-10


@pytest.mark.parametrize("config", [{}, {"prior_layers": 1, "latent": 3}, {"conditional_prior": False}])
def test_float64_equals_torch_random_graphs(config: dict) -> None:
    """The issue's equality: float64 NumPy forward = float64 torch forward to 1e-10, on random
    graphs of several sizes (with and without pattern entries outside A, block sizes 1-3)."""
    model = random_model(7, **config)
    for k, n in enumerate((40, 300, 2500)):
        ahat, s, a2 = random_problem(n, seed=10 + k, extra=0.0 if k == 1 else 4.0 / n)
        compare_float64(model, ahat, s, None if k == 1 else a2, bs=1 + k, seed=k)


def test_residual_model_corrects_fsai() -> None:
    """A residual model (GCVAEConfig.residual) corrects FSAI's values on S: NumPy = torch with the same base;
    an untrained (zero) correction gives FSAI itself; without FSAI's values both refuse; an architecture
    without the field (models exported before it) reads as a non-residual one."""
    from pcgcvae.fsai import fsai_values

    model = random_model(7, residual=True)
    net = to_numpy(model)
    assert net.residual
    ahat, s, a2 = random_problem(90, seed=4, extra=0.05)
    base = fsai_values(ahat, s)
    data = build_graph(ahat, s, a2_on_s=a2, block_size=1, target=base)
    arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=1)
    (mean_np,) = net.generate(arrays, use_mean=True, base=base)
    (mean_t,) = model.generate(data, use_mean=True)
    assert_close(mean_np, mean_t.numpy())
    assert not np.allclose(mean_np, base, rtol=1e-3)
    with torch.no_grad():
        for p in model.factor_head.out.parameters():
            p.zero_()
    (untrained,) = to_numpy(model).generate(arrays, use_mean=True, base=base)
    np.testing.assert_allclose(untrained, base, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="FSAI's values"):
        net.generate(arrays, use_mean=True)
    with pytest.raises(ValueError, match="FSAI's values"):  # the torch model too: a graph without a target
        model.generate(build_graph(ahat, s, a2_on_s=a2, block_size=1), use_mean=True)
    arch = {k: v for k, v in model.config.to_dict().items() if k != "residual"}
    assert inference.check_architecture({"class": "GCVAE", **arch}, "old")["residual"] is False


def assert_residual_only_field(model: GCVAE, field: str) -> None:
    """An architecture field that needs a residual model: refused without one (torch and the NumPy
    header check), and read as False from architectures exported before it existed."""
    with pytest.raises(ValueError, match="residual"):
        GCVAE(GCVAEConfig(residual=False, **{field: True}))
    arch = dict(model.config.to_dict())
    with pytest.raises(CheckpointError, match=field):
        inference.check_architecture({"class": "GCVAE", **arch, "residual": False}, "bad")
    del arch[field]
    assert inference.check_architecture({"class": "GCVAE", **arch}, "old")[field] is False


def test_fsai_inputs_model() -> None:
    """A residual model whose decoder reads FSAI's values (GCVAEConfig.fsai_inputs): NumPy = torch in
    float32 and to 1e-10 in float64 (block sizes 1-2, entries of S outside A); the same network with
    the inputs added at zero weight (train --fsai-inputs --init) computes what it did; the field needs
    a residual model, and architectures without it read as False."""
    from pcgcvae.fsai import fsai_values
    from pcgcvae.training.train import with_fsai_inputs

    model = random_model(5, residual=True, fsai_inputs=True)
    net = to_numpy(model)
    assert net.fsai_inputs and net.residual
    for k, n in enumerate((70, 400)):
        ahat, s, a2 = random_problem(n, seed=20 + k, extra=0.03 if k else 0.0)
        compare(model, net, ahat, s, a2 if k else None, bs=1 + k, seed=k)
        compare_float64(model, ahat, s, a2 if k else None, bs=1 + k, seed=k)
    # the new inputs matter: zeroing their weights changes the factor
    ahat, s, a2 = random_problem(90, seed=4, extra=0.05)
    base = fsai_values(ahat, s)
    arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=1)
    old = random_model(7, residual=True)
    (before,) = to_numpy(old).generate(arrays, use_mean=True, base=base)
    grown = with_fsai_inputs(old).eval()
    assert grown.config.fsai_inputs
    (after,) = to_numpy(grown).generate(arrays, use_mean=True, base=base)
    np.testing.assert_array_equal(after, before)
    with torch.no_grad():
        grown.decoder.embed[0].weight[:, -1] = 1.0
    (moved,) = to_numpy(grown).generate(arrays, use_mean=True, base=base)
    assert not np.allclose(moved, before, rtol=1e-4)
    assert_residual_only_field(model, "fsai_inputs")
    with pytest.raises(ValueError, match="residual"):
        with_fsai_inputs(random_model(7))


def test_spectral_condition_estimate() -> None:
    """pcgcvae.spectrum: with as many Lanczos steps as rows the Ritz values are the eigenvalues (exact
    condition number); fewer steps give a lower bound; the feature is its clipped log."""
    from pcgcvae.spectrum import FEATURE_MAX, condition_estimate, spectral_feature

    n = 6
    d = np.array([1.0, 2.0, 3.0, 4.0, 7.0, 10.0])
    ident = np.arange(n + 1)
    diag = CSR(ident, np.arange(n), d)
    s = CSR(ident, np.arange(n), np.zeros(n))
    assert condition_estimate(diag, s, np.ones(n), steps=n) == pytest.approx(10.0, rel=1e-10)
    assert condition_estimate(diag, s, 1 / np.sqrt(d), steps=n) == pytest.approx(1.0, rel=1e-10)  # G Â Gᵀ = I
    one = CSR(np.arange(2), np.zeros(1, dtype=int), np.ones(1))  # a rank with one row: no Lanczos breakdown
    assert condition_estimate(one, one, np.ones(1)) == 1.0
    empty = CSR(np.zeros(1, dtype=int), np.zeros(0, dtype=int), np.zeros(0))
    assert spectral_feature(empty, empty, np.zeros(0)) == 0.0
    ahat, s2, _ = random_problem(300, seed=11)
    from pcgcvae.fsai import fsai_values

    f = fsai_values(ahat, s2)
    k5, k20 = condition_estimate(ahat, s2, f, steps=5), condition_estimate(ahat, s2, f)
    exact = np.linalg.cond((lambda g: g @ ahat.scipy().toarray() @ g.T)(s2.scipy(f).toarray()))
    assert 1.0 < k5 <= k20 <= exact * (1 + 1e-9)
    assert spectral_feature(ahat, s2, f) == pytest.approx(np.log(k20))
    assert 0.0 <= spectral_feature(ahat, s2, 1e-3 * f) <= FEATURE_MAX


def test_spectral_gate_model() -> None:
    """A residual model whose correction is scaled by a problem-level gate 1 + tanh(w0 φ + w1)
    (GCVAEConfig.spectral_gate): NumPy = torch; one gate per graph of a batch; a closed gate gives
    FSAI's factor exactly; the same network grown with a gate of weight zero (train --spectral-gate
    --init) computes what it did; the input is required and the field needs a residual model."""
    from torch_geometric.data import Batch

    from pcgcvae.fsai import fsai_values
    from pcgcvae.spectrum import spectral_feature
    from pcgcvae.training.train import with_spectral_gate

    model = random_model(5, residual=True, spectral_gate=True)
    with torch.no_grad():
        model.spectral_gate.copy_(torch.tensor([0.7, -1.5]))
    net = to_numpy(model)
    graphs = []
    for k, n in enumerate((80, 300)):
        ahat, s, a2 = random_problem(n, seed=30 + k, extra=0.03)
        base = fsai_values(ahat, s)
        phi = spectral_feature(ahat, s, base)
        data = build_graph(ahat, s, a2_on_s=a2, block_size=1, target=base)
        data.spectral = torch.tensor([phi])
        arrays = build_arrays(ahat, s, a2_on_s=a2, block_size=1)
        assert net.gate(phi) == pytest.approx(1 + np.tanh(0.7 * phi - 1.5), rel=1e-6)
        (mean_t,) = model.generate(data, use_mean=True)
        (mean_np,) = net.generate(arrays, use_mean=True, base=base, spectral=phi)
        assert_close(mean_np, mean_t.numpy())
        with pytest.raises(ValueError, match="spectral"):
            net.generate(arrays, use_mean=True, base=base)
        compare(model, net, ahat, s, a2, bs=1, seed=k)  # prior, decoder, sampled latents
        compare_float64(model, ahat, s, a2, bs=1, seed=k)
        graphs.append((data, arrays, base, phi))
    # a batch of the two graphs: each gets its own gate
    batch = Batch.from_data_list([g[0] for g in graphs])
    with torch.no_grad():
        z = torch.zeros(batch.num_nodes, model.config.latent)
        both = model.decode(batch, z).numpy()
        one = np.concatenate([model.decode(g[0], torch.zeros(g[0].num_nodes, model.config.latent)).numpy()
                              for g in graphs])
    np.testing.assert_allclose(both, one, rtol=1e-5, atol=1e-6)
    # a closed gate: FSAI's factor
    data, arrays, base, phi = graphs[1]
    closed = to_numpy(model)
    closed.spectral_gate = np.array([0.0, -50.0], dtype=np.float32)
    (g_closed,) = closed.generate(arrays, use_mean=True, base=base, spectral=phi)
    np.testing.assert_allclose(g_closed, base.astype(np.float32), rtol=1e-6)
    # grown with a gate of weight zero: the same factor
    old = random_model(7, residual=True)
    grown = with_spectral_gate(old).eval()
    assert grown.config.spectral_gate
    (before,) = to_numpy(old).generate(arrays, use_mean=True, base=base)
    (after,) = to_numpy(grown).generate(arrays, use_mean=True, base=base, spectral=phi)
    np.testing.assert_array_equal(after, before)
    assert_residual_only_field(model, "spectral_gate")
    with pytest.raises(ValueError, match="residual"):
        with_spectral_gate(random_model(7))


def loss_graphs(sizes: tuple[int, int], seed: int, spectral: bool = False) -> list:
    """Two small training graphs (random SPD problems of ``sizes`` rows, seeds ``seed`` and ``seed + 1``) with
    what :func:`pcgcvae.training.train.gcvae_loss` reads: FSAI's values as the target and its Kaporin score (and,
    with ``spectral``, the spectral gate's input)."""
    from pcgcvae.fsai import fsai_values, kaporin_score
    from pcgcvae.spectrum import spectral_feature

    graphs = []
    for k, n in enumerate(sizes):
        ahat, s, a2 = random_problem(n, seed=seed + k)
        base = fsai_values(ahat, s)
        g = build_graph(ahat, s, a2_on_s=a2, block_size=1, target=base, triplets=True)
        if spectral:
            g.spectral = torch.tensor([spectral_feature(ahat, s, base)])
        g.target_score = torch.tensor([kaporin_score(base, s)])
        graphs.append(g)
    return graphs


def test_gate_penalty_prices_the_gate() -> None:
    """train --gate-penalty: the loss grows by the penalty times the batch's mean gate (and reports the gate)."""
    from torch_geometric.data import Batch

    from pcgcvae.training.train import gcvae_loss

    model = random_model(3, residual=True, spectral_gate=True)
    with torch.no_grad():
        model.spectral_gate.copy_(torch.tensor([0.4, -0.2]))
    batch = Batch.from_data_list(loss_graphs((60, 100), seed=50, spectral=True))
    losses = {}
    for lam in (0.0, 0.3):
        loss, parts = gcvae_loss(model, batch, beta=0.01, generator=torch.Generator().manual_seed(0),
                                 gate_penalty=lam)
        losses[lam] = loss.item()
    gate = model.gate(batch)
    assert gate.shape == (2,) and parts["gate"] == pytest.approx(gate.mean().item())
    assert losses[0.3] - losses[0.0] == pytest.approx(0.3 * gate.mean().item(), rel=1e-5)


def test_cond_hinge_prices_losses_to_fsai() -> None:
    """train --cond-hinge: FSAI's log condition is stored per graph once; a residual model with a zero
    correction (G = F) has no excess over it, a perturbed one pays the hinge times its mean excess."""
    from torch_geometric.data import Batch

    from pcgcvae.training.train import fsai_log_conditions, gcvae_loss

    graphs = loss_graphs((50, 80), seed=60)
    fsai_log_conditions(graphs, max_n=1000)
    batch = Batch.from_data_list(graphs)
    assert batch.fsai_log_cond.shape == (2,) and torch.all(batch.fsai_log_cond > 0)
    zero = GCVAE(GCVAEConfig(hidden=8, decoder_layers=1, prior_layers=1, residual=True)).eval()
    _, parts = gcvae_loss(zero, batch, beta=0.01, cond_weight=1.0, cond_max_n=1000, cond_hinge=3.0,
                          generator=torch.Generator().manual_seed(0))
    assert parts["cond_excess"] == pytest.approx(0.0, abs=1e-9)
    model = random_model(4, residual=True)
    losses, parts = {}, {}
    for mu in (0.0, 3.0):
        loss, parts[mu] = gcvae_loss(model, batch, beta=0.01, cond_weight=1.0, cond_max_n=1000, cond_hinge=mu,
                                     generator=torch.Generator().manual_seed(0))
        losses[mu] = loss.item()
    assert parts[3.0]["cond_excess"] > 0
    assert losses[3.0] - losses[0.0] == pytest.approx(3.0 * parts[3.0]["cond_excess"], rel=1e-6)
    # a graph the condition term leaves out (--kaporin-only) is left out of the hinge too: each graph is
    # compared with its own FSAI reference
    from pcgcvae.training.quality import log_condition_per_graph, normalise_rows

    for k in range(2):
        batch.cond = torch.tensor([j == k for j in range(2)])
        _, part = gcvae_loss(model, batch, beta=0.01, cond_weight=1.0, cond_max_n=1000, cond_hinge=3.0,
                             generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            mu_q, lv_q = model.encode(batch)
            eps = torch.randn(mu_q.shape, generator=torch.Generator().manual_seed(0))
            g = normalise_rows(model.decode(batch, mu_q + torch.exp(0.5 * lv_q) * eps), batch)
            (mine,) = log_condition_per_graph(g, batch, 1000, batch.cond)
        assert part["cond_excess"] == pytest.approx(max(0.0, float(mine - batch.fsai_log_cond[k])), rel=1e-6)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_float64_equals_torch_shipped_models(real_graphs, name: str) -> None:
    """The same on a shipped model's real input (Firedrake graphs of its block size, levels 1 and 2)."""
    model, _ = load_model(name)
    family = "elasticity" if name == "elasticity" else "poisson"
    for level in (1, 2):
        ahat, s, a2, bs = real_graphs[(family, level)]
        compare_float64(model, ahat, s, a2, bs, seed=level)


def test_chunked_forward(monkeypatch) -> None:
    """Tiny chunks (nodes with more incoming edges than a chunk, chunk edges in both
    implementations) change nothing."""
    model = random_model(3)
    net = to_numpy(model)
    ahat, s, a2 = random_problem(150, seed=4, extra=0.03)
    data = build_graph(ahat, s, a2_on_s=a2)
    arrays = build_arrays(ahat, s, a2_on_s=a2)
    (whole,) = net.generate(arrays, use_mean=True)
    monkeypatch.setattr(inference, "CHUNK", 5)
    monkeypatch.setattr(torch_model, "INFERENCE_CHUNK", 5)
    (chunked,) = net.generate(arrays, use_mean=True)
    (ref,) = model.generate(data, use_mean=True)
    assert_close(chunked, ref.numpy())
    assert_close(chunked, whole)


@pytest.mark.parametrize("family,level", [("poisson", 1), ("poisson", 2), ("elasticity", 1), ("elasticity", 2)])
def test_real_graphs_random_model(real_graphs, family: str, level: int) -> None:
    ahat, s, a2, bs = real_graphs[(family, level)]
    assert bs == (1 if family == "poisson" else 2)
    model = random_model(11)
    compare(model, to_numpy(model), ahat, s, a2, bs, seed=5)


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_models_numpy_equals_torch(real_graphs, name: str) -> None:
    """Each shipped .npz reproduces its .pt on real graphs of its block size, at levels 1 and 2."""
    model, _ = load_model(name)
    net, _ = load_inference_model(name)
    family = "elasticity" if name == "elasticity" else "poisson"
    for level in (1, 2):
        ahat, s, a2, bs = real_graphs[(family, level)]
        compare(model, net, ahat, s, a2, bs, seed=level)


# -- (b) the file format -------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_exports_are_current(name: str) -> None:
    """Every shipped .pt has its .npz (small), exported from exactly this .pt, with its metadata."""
    pt, npz = shipped_model_path(name), shipped_model_path(name, ".npz")
    assert npz.stat().st_size < 5 * 2**20
    _, info = load_model(name)
    weights, header = read_inference_model(npz)
    assert header["source"]["sha256"] == hashlib.sha256(pt.read_bytes()).hexdigest(), (
        f"{npz.name} is stale: run python -m pcgcvae.training.export {name}")
    assert header["meta"] == json.loads(json.dumps(info["meta"]))
    assert header["architecture"] == info["architecture"]
    assert not any(k.startswith("encoder") for k in weights)
    _, by_name = load_inference_model(name)
    assert by_name["meta"] == header["meta"]


def test_export_round_trip(tmp_path) -> None:
    model = random_model(5, latent=3)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, META)
    out = export(ckpt)
    assert out == tmp_path / "m.npz"
    weights, header = read_inference_model(out)
    assert header["format"] == FORMAT and header["format_version"] == FORMAT_VERSION
    assert header["package_version"] == __import__("pcgcvae").__version__
    assert header["architecture"] == {"class": "GCVAE", **model.config.to_dict()}
    assert set(header["architecture"]) - {"class"} == set(ARCHITECTURE_FIELDS) == set(model.config.to_dict())
    assert header["meta"] == META
    assert header["source"]["file"] == "m.pt" and header["source"]["format_version"] == 1
    state = model.state_dict()
    assert set(weights) == set(inference_weight_shapes(model.config.to_dict()))
    assert not any(k.startswith("encoder") for k in weights)
    for k, w in weights.items():
        assert w.dtype == np.float32 and np.array_equal(w, state[k].numpy()), k
    # byte-for-byte reproducible, and the command line writes the same file
    first = out.read_bytes()
    export_main([str(ckpt), "--out", str(tmp_path / "cli" / "new")])  # --out is made when missing
    assert (tmp_path / "cli" / "new" / "m.npz").read_bytes() == first
    with pytest.raises(SystemExit):  # --out naming a file: a usage error, not a traceback
        export_main([str(ckpt), "--out", str(out)])
    # the .npz and the .pt (converted in memory) load to the same model
    ahat, s, _ = random_problem(70, seed=2)
    arrays = build_arrays(ahat, s)
    net_npz, h_npz = load_inference_model(out)
    net_pt, h_pt = load_inference_model(ckpt)
    assert h_npz["meta"] == h_pt["meta"] == META
    assert np.array_equal(net_npz.generate(arrays, use_mean=True)[0], net_pt.generate(arrays, use_mean=True)[0])
    compare(model, net_npz, ahat, s, None, 1, seed=0)


def test_loader_caches_per_file_version(tmp_path) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, random_model(1), META)
    path = export(ckpt)
    first = load_inference_model(path)
    assert load_inference_model(str(path)) is first
    save_checkpoint(ckpt, random_model(2), {**META, "family": "elasticity"})
    export(ckpt)
    os.utime(path, ns=(1, 1))  # a new file version even within the file system's time resolution
    second = load_inference_model(path)
    assert second is not first and second[1]["meta"]["family"] == "elasticity"


# -- (c) what the loader refuses --------------------------------------------------------------
def write_npz(path: Path, header: dict | str | None, weights: dict[str, np.ndarray]) -> Path:
    arrays = dict(weights)
    if header is not None:
        arrays[HEADER_KEY] = np.array(header if isinstance(header, str) else json.dumps(header))
    np.savez(path, **arrays)
    return path


@pytest.fixture
def exported(tmp_path) -> tuple[dict, dict]:
    ckpt = tmp_path / "good.pt"
    save_checkpoint(ckpt, random_model(0), META)
    return checkpoint_to_numpy(ckpt)


def test_loader_errors(tmp_path, exported) -> None:
    weights, header = exported

    def refused(path: Path, needle: str) -> None:
        with pytest.raises(CheckpointError, match=needle):
            load_inference_model(path)

    (tmp_path / "text.npz").write_text("not a model")
    refused(tmp_path / "text.npz", "corrupt or not an .npz")
    refused(write_npz(tmp_path / "plain.npz", None, {"a": np.zeros(3)}), "foreign file")
    refused(write_npz(tmp_path / "other.npz", {**header, "format": "someone-else"}, weights), "foreign file")
    refused(write_npz(tmp_path / "badjson.npz", "{not json", weights), "not valid JSON")
    refused(write_npz(tmp_path / "v2.npz", {**header, "format_version": FORMAT_VERSION + 1}, weights),
            "format version 2, this pcgcvae .* reads version 1")
    arch = header["architecture"]
    refused(write_npz(tmp_path / "arch.npz", {**header, "architecture": {**arch, "class": "Other"}}, weights),
            "unknown architecture")
    refused(write_npz(tmp_path / "field.npz", {**header, "architecture": {**arch, "heads": 2}}, weights),
            r"unknown fields \['heads'\]")
    refused(write_npz(tmp_path / "hidden.npz", {**header, "architecture": {**arch, "hidden": 0}}, weights),
            "'hidden' = 0")
    bad = dict(weights)
    bad["decoder.convs.0.lin_e.weight"] = np.zeros((16, 5), dtype=np.float32)
    refused(write_npz(tmp_path / "shape.npz", header, bad), r"'decoder.convs.0.lin_e.weight' has shape \(16, 5\)")
    # the weights of another architecture (one more decoder layer recorded than stored)
    more = {**header, "architecture": {**arch, "decoder_layers": arch["decoder_layers"] + 1}}
    refused(write_npz(tmp_path / "layers.npz", more, weights), "missing .*decoder.convs.3")
    missing = {k: v for k, v in weights.items() if k != "factor_head.out.bias"}
    refused(write_npz(tmp_path / "missing.npz", header, missing), r"missing \['factor_head.out.bias'\]")
    refused(write_npz(tmp_path / "extra.npz", header, {**weights, "encoder.embed.0.bias": np.zeros(16)}),
            r"unexpected \['encoder.embed.0.bias'\]")
    refused(write_npz(tmp_path / "int.npz", header, {**weights, "factor_head.out.bias": np.zeros(1, dtype=int)}),
            "not a floating type")
    nan = {**weights, "factor_head.out.bias": np.full(1, np.nan, dtype=np.float32)}
    refused(write_npz(tmp_path / "nan.npz", header, nan), "non-finite")
    refused(write_npz(tmp_path / "meta.npz", {**header, "meta": {"family": "poisson"}}, weights),
            r"lacks metadata \['block_sizes', 'pattern_levels'\]")
    refused(tmp_path / "nothing.npz", "no GCVAE checkpoint")
    with pytest.raises(CheckpointError, match="shape"):
        save_inference_model(tmp_path / "never.npz", bad, header)
    assert not (tmp_path / "never.npz").exists()
    write_npz(tmp_path / "ok.npz", header, weights)  # the unmodified pieces load
    assert load_inference_model(tmp_path / "ok.npz")[1]["meta"] == META


# -- (d) where import torch fails ------------------------------------------------------------------
BLOCKED_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from petsc4py import PETSc
    sys.path.insert(0, {tests!r})
    from helpers import error_text, laplacian_2d, python_ksp

    CASES = {{
        "default": {{}},
        "level2": {{"pc_gcvae_pattern_level": 2}},
        "sampled": {{"pc_gcvae_latent": "sample", "pc_gcvae_samples": 3, "pc_gcvae_seed": 5}},
        "mean+samples": {{"pc_gcvae_samples": 2, "pc_gcvae_seed": 1, "pc_gcvae_ordering": "natural"}},
    }}

    def solve_all():
        A = laplacian_2d(24, comm=PETSc.COMM_SELF, kappa_seed=3)
        out = {{}}
        for name, opts in CASES.items():
            ksp = python_ksp(A, "GCVAEPC", **opts)
            ksp.setTolerances(rtol=1e-8)
            b = A.createVecLeft()
            b.array[:] = np.random.default_rng(0).standard_normal(b.getLocalSize())
            x = b.duplicate()
            ksp.solve(b, x)
            ctx = ksp.getPC().getPythonContext()
            out[name] = {{"reason": int(ksp.getConvergedReason()), "its": ksp.getIterationNumber(),
                          "scores": ctx.stats["sample_scores"], "model": ctx.model_info["meta"]["family"]}}
            ksp.destroy()
        return out
''')

BLOCKED_MAIN = textwrap.dedent('''
    result = solve_all()
    result["torch_loaded"] = [m for m in sys.modules  # nor the training subpackage
                              if m in ("torch", "torch_geometric") or m.startswith("pcgcvae.training")]
    try:  # a .pt checkpoint needs torch: a clear error
        A = laplacian_2d(6, comm=PETSc.COMM_SELF)
        python_ksp(A, "GCVAEPC", pc_gcvae_model={pt!r}).setUp()
        result["pt"] = "no error"
    except Exception as exc:
        result["pt"] = error_text(exc)
    print("RESULT" + json.dumps(result))
''')


def blocked_env(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose ``import torch`` / ``import torch_geometric`` fail (and leave a note)."""
    block = tmp_path / "block"
    log = tmp_path / "torch-imports.log"
    for mod in ("torch", "torch_geometric"):
        (block / mod).mkdir(parents=True)
        (block / mod / "__init__.py").write_text(
            "import os\n"
            f"with open(os.environ['PCGCVAE_BLOCK_LOG'], 'a') as f:\n    f.write('{mod}\\n')\n"
            f"raise ImportError('{mod} is blocked in this test')\n"
        )
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{REPO}", PCGCVAE_BLOCK_LOG=str(log))
    return env, log


def test_pc_without_torch(tmp_path) -> None:
    """GCVAEPC from petsc4py in a process where torch cannot be imported: CG converges in exactly
    the iterations of this (torch-importing) process, nothing even tries to import torch, and a
    .pt checkpoint is refused with a message that says what to do."""
    env, log = blocked_env(tmp_path)
    script = BLOCKED_SCRIPT.format(tests=str(REPO / "tests"))
    out = subprocess.run([sys.executable, "-c", script + BLOCKED_MAIN.format(pt=str(shipped_model_path("poisson")))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    blocked = json.loads(out.stdout.split("RESULT", 1)[1])
    assert blocked.pop("torch_loaded") == []
    pt_error = blocked.pop("pt")
    assert "needs torch" in pt_error and "pcgcvae.training.export" in pt_error, pt_error
    attempts = log.read_text().split()
    assert attempts == ["torch"], attempts  # only the .pt case, at the very end, tried
    namespace: dict = {}
    exec(script, namespace)
    here = namespace["solve_all"]()
    for case in here.values():
        assert case["reason"] > 0
    assert blocked == here
    assert len(here["sampled"]["scores"]) == 3 and len(here["mean+samples"]["scores"]) == 2


def test_c_program_without_torch(ex2, tmp_path) -> None:  # noqa: F811
    """PETSc's ex2 (C) with GCVAEPC where torch cannot be imported: the same iterations as with torch
    importable, and no attempt to import it."""
    env, log = blocked_env(tmp_path)
    opts = ("-pc_type", "python", "-pc_python_type", "pcgcvae.GCVAEPC", "-pc_gcvae_ordering", "natural", "-ksp_view")
    blocked = run_ex2(ex2, *opts, env=env)
    assert not log.exists(), log.read_text()
    assert "model 'poisson'" in blocked
    assert its(blocked) == its(run_ex2(ex2, *opts))


MPI_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    from petsc4py import PETSc
    sys.path.insert(0, {tests!r})
    from helpers import laplacian_2d, python_ksp

    A = laplacian_2d(30, kappa_seed=4)
    out = []
    for opts in ({{}}, {{"pc_gcvae_overlap": 1, "pc_gcvae_pattern_level": 2}}):
        ksp = python_ksp(A, "GCVAEPC", **opts)
        ksp.setTolerances(rtol=1e-8)
        b = A.createVecLeft()
        b.set(1.0)
        x = b.duplicate()
        ksp.solve(b, x)
        out.append((int(ksp.getConvergedReason()), ksp.getIterationNumber()))
    loaded = [m for m in sys.modules if m in ("torch", "torch_geometric") or m.startswith("pcgcvae.training")]
    if PETSc.COMM_WORLD.getRank() == 0:
        print("RESULT" + json.dumps({{"solves": out, "torch_loaded": loaded}}))
''')


def test_mpi_solve_without_torch(tmp_path) -> None:
    """Under mpiexec -n 2 with torch unimportable: the same iterations as with torch importable,
    no rank tries to import it, and nothing is written to the temporary directory."""
    env, log = blocked_env(tmp_path)
    script = MPI_SCRIPT.format(tests=str(REPO / "tests"))
    cmd = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, "-c", script]
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    results = []
    for run_env in (dict(env, TMPDIR=str(tmp)), dict(os.environ, PYTHONPATH=str(REPO))):
        out = subprocess.run(cmd, env=dict(run_env, OMPI_MCA_orte_tmpdir_base=str(tmp_path)),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        results.append(json.loads(out.stdout.split("RESULT", 1)[1]))
    blocked, importable = results
    assert not log.exists(), log.read_text()
    assert blocked["torch_loaded"] == []
    assert all(reason > 0 for reason, _ in blocked["solves"])
    assert blocked["solves"] == importable["solves"]
    left = [p.name for p in tmp.iterdir() if not p.name.startswith(("ompi", "openmpi", "pmix"))]
    assert left == [], left


def test_terms_on_prior_mean_judge_the_shipped_factor() -> None:
    """train --terms-on prior-mean: the condition term judges the factor decoded from the prior's mean (what
    GCVAEPC ships), --terms-on posterior the one from the posterior sample; the Kaporin gap is the same."""
    from torch_geometric.data import Batch

    from pcgcvae.training.quality import log_condition_per_graph, normalise_rows
    from pcgcvae.training.train import gcvae_loss

    batch = Batch.from_data_list(loss_graphs((40, 70), seed=80))
    model = random_model(5, residual=True)
    parts = {}
    for where in ("posterior", "prior-mean"):
        _, parts[where] = gcvae_loss(model, batch, beta=0.01, cond_weight=1.0, cond_max_n=1000, terms_on=where,
                                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (raw,) = model.generate(batch, use_mean=True)
        shipped = log_condition_per_graph(normalise_rows(raw, batch), batch, 1000).mean().item()
    assert parts["prior-mean"]["log_cond"] == pytest.approx(shipped, rel=1e-9)
    assert parts["posterior"]["log_cond"] != pytest.approx(shipped, rel=1e-6)
    assert parts["posterior"]["kaporin_gap"] == pytest.approx(parts["prior-mean"]["kaporin_gap"], rel=1e-12)
    with pytest.raises(ValueError, match="terms_on"):
        gcvae_loss(model, batch, beta=0.01, terms_on="mean")
