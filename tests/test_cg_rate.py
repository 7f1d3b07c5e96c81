"""The training's unrolled-CG term (pcgcvae.training.quality.cg_rate_per_graph, train.cg_iteration_ratio):
the energy-norm errors of a plain NumPy PCG, per graph of a batch, differentiable, and FSAI's ratio to
itself is 1."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers import laplacian_2d
from petsc4py import PETSc
from torch_geometric.data import Batch

from pcgcvae.csr import scale_symmetric
from pcgcvae.fsai import fsai_values
from pcgcvae.ordering import local_permutation, permute
from pcgcvae.petsc_csr import mat_to_csr
from pcgcvae.training.graph import build_graph
from pcgcvae.training.quality import cg_rate_per_graph
from pcgcvae.training.train import cg_iteration_ratio, fsai_cg_steps


def _graph(m: int, seed: int):
    A = laplacian_2d(m, comm=PETSc.COMM_SELF, kappa_seed=seed)
    a = mat_to_csr(A)
    A.destroy()
    ahat, _ = scale_symmetric(permute(a, local_permutation(a, "nd")))
    s = ahat.select(ahat.indices <= ahat.rows(ahat.indices.dtype))  # tril(Â), Â's values: pattern level 1
    f = fsai_values(ahat, s)
    return build_graph(ahat, s, target=f), ahat, s, f


def _numpy_rate(ahat, s, g: np.ndarray, xstar: np.ndarray, k: int) -> float:
    """log(‖x_k − x*‖²_Â / ‖x*‖²_Â) / k of k PCG steps on Â x = Â x* with M = Gᵀ G from x0 = 0."""
    a = ahat.scipy()
    gm = sp.csr_matrix((g, s.indices, s.indptr), shape=(s.n, s.n))
    x, r = np.zeros_like(xstar), a @ xstar
    z = gm.T @ (gm @ r)
    p, rz = z, r @ z
    for _ in range(k):
        ap = a @ p
        alpha = rz / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        z = gm.T @ (gm @ r)
        rz, rz_old = r @ z, rz
        p = z + (rz / rz_old) * p
    e = x - xstar
    return float(np.log((e @ (a @ e)) / (xstar @ (a @ xstar))) / k)


def test_rates_match_numpy_pcg_per_graph_of_a_batch():
    (g1, a1, s1, f1), (g2, a2, s2, f2) = _graph(9, 1), _graph(12, 2)
    batch = Batch.from_data_list([g1, g2])
    rng = np.random.default_rng(0)
    xstar = rng.standard_normal((batch.num_nodes, 3))
    steps = torch.tensor([7, 11])
    rates = cg_rate_per_graph(batch.target.double(), batch, steps, torch.from_numpy(xstar))
    n1 = g1.num_nodes
    for k, (a, s, f, part, st) in enumerate([(a1, s1, f1, xstar[:n1], 7), (a2, s2, f2, xstar[n1:], 11)]):
        want = np.mean([_numpy_rate(a, s, f, part[:, j], st) for j in range(3)])
        assert float(rates[k]) == pytest.approx(want, rel=1e-4)
        assert want < 0


def test_iteration_ratio_is_one_for_fsai_and_differentiable():
    g1, *_ = _graph(10, 3)
    fsai_cg_steps([g1], 0.75, max_n=10_000)
    assert int(g1.cg_steps) >= 1
    batch = Batch.from_data_list([g1])
    gen = torch.Generator().manual_seed(0)
    ratio = cg_iteration_ratio(batch.target.double(), batch, 2, gen)
    assert float(ratio[0]) == pytest.approx(1.0, rel=1e-10)
    g = (batch.target.double() * 1.01).requires_grad_(True)
    with torch.no_grad():
        g[batch.s_diag] *= 1.2  # away from FSAI: a worse factor predicts more iterations
    ratio = cg_iteration_ratio(g, batch, 2, gen)
    ratio.sum().backward()
    assert float(ratio[0].detach()) > 1.0
    assert torch.isfinite(g.grad).all() and float(g.grad.abs().sum()) > 0


def test_checkpointed_rates_and_gradients_equal_the_plain_ones():
    (g1, *_), (g2, *_) = _graph(9, 4), _graph(11, 5)
    batch = Batch.from_data_list([g1, g2])
    xstar = torch.from_numpy(np.random.default_rng(1).standard_normal((batch.num_nodes, 2)))
    steps = torch.tensor([9, 13])
    grads, rates = [], []
    for every in (0, 4):
        g = (batch.target.double() * 1.02).requires_grad_(True)
        rate = cg_rate_per_graph(g, batch, steps, xstar, checkpoint_every=every)
        rate.sum().backward()
        rates.append(rate.detach())
        grads.append(g.grad)
    assert torch.allclose(rates[0], rates[1], rtol=1e-12, atol=0)
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-14)
    assert float(grads[0].abs().sum()) > 0
