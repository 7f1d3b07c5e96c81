"""The graph-conditioned variational autoencoder (GCVAE).

Following Li, Wang & Jimack (arXiv 2405.11007): an encoder q(z | A, target)
reads the matrix graph together with a high-performance preconditioner for it
(the FSAI factor on the pattern) and returns a per-node Gaussian latent; a
decoder p(G | z, A) maps the graph and z to the values of a lower-triangular
factor on the pattern S; a conditional prior p(z | A) (a small GNN, or N(0, I))
is what is sampled for an unseen matrix.  Latents are per node, so one model
serves every mesh size.

The decoder output is a residual about the identity: an untrained decoder
gives G = I, i.e. exactly Jacobi after the diagonal scaling.  With
``residual=True`` it is a residual about classical FSAI on the same pattern
instead (the graph's ``target``): G_ij = F_ij + out_ij off the diagonal,
G_ii = F_ii exp(out_ii), so an untrained decoder gives FSAI itself and the
network learns only a correction to it.  With ``fsai_inputs=True`` (residual models
only) the decoder also reads FSAI's own values: log F_ii as a node feature (0 where
row i is decoupled, i.e. where FSAI is exact) and F_ij (log F_ii on the diagonal) as
a pattern feature, so it can tell where FSAI leaves nothing to correct.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.nn import MessagePassing

from .graph import (
    EDGE_FEATURES,
    FSAI_INPUT_FEATURES,
    NODE_FEATURES,
    PATTERN_FEATURES,
    TARGET_EDGE_FEATURES,
    TARGET_NODE_FEATURES,
    FactorGraph,
)

INFERENCE_CHUNK = 1 << 18  # edges (or nodes) per chunk when generating without gradients


@dataclass
class GCVAEConfig:
    """Architecture hyper-parameters; stored in every checkpoint."""

    hidden: int = 32
    decoder_layers: int = 4
    encoder_layers: int = 3
    prior_layers: int = 2
    latent: int = 4
    conditional_prior: bool = True
    residual: bool = False  # the decoder corrects FSAI's factor (the graph's target) instead of the identity
    fsai_inputs: bool = False  # (residual only) the decoder also reads FSAI's values: log F_ii per node, F_ij per entry
    # (residual only) the correction is scaled by 1 + tanh(w0 φ + w1), φ = log κ(F Â Fᵀ) estimated by
    # pcgcvae.spectrum (the graph's ``spectral``): a learned problem-level gate, 1 (no change) at w = 0
    spectral_gate: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class EdgeConditionedConv(MessagePassing):
    """h_i <- h_i + U[h_i, mean_j σ(A h_i + B h_j + C e_ji)].

    The message is split into node-level linear maps so that the per-edge work
    is one add and one activation (cheap on graphs with millions of edges).
    """

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__(aggr="mean")
        self.lin_i = nn.Linear(hidden, hidden)
        self.lin_j = nn.Linear(hidden, hidden, bias=False)
        self.lin_e = nn.Linear(edge_dim, hidden, bias=False)
        self.update_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or edge_index.size(1) <= INFERENCE_CHUNK:
            m = self.propagate(edge_index, a=self.lin_i(h), b=self.lin_j(h), c=self.lin_e(edge_attr))
            return self._update(h, m)
        return self._chunked_forward(h, edge_index, edge_attr)

    def _update(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.update_mlp(torch.cat([h, m], dim=-1)))

    def _chunked_forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """The same layer (inference only), edges and nodes in chunks: a few node-sized
        tensors alive at a time, so memory stays bounded on graphs with millions of nodes."""
        a, b = self.lin_i(h), self.lin_j(h)
        src, dst = edge_index
        m = torch.zeros_like(a)
        for start in range(0, src.numel(), INFERENCE_CHUNK):
            sl = slice(start, start + INFERENCE_CHUNK)
            # the message silu(a_i + b_j + c_ji), in place; index_select: a far faster row gather than a[idx]
            t = a.index_select(0, dst[sl])
            t += b.index_select(0, src[sl])
            t += self.lin_e(edge_attr[sl])
            m.index_add_(0, dst[sl], torch.nn.functional.silu(t, inplace=True))
        del a, b
        m /= torch.bincount(dst, minlength=h.size(0)).clamp_min(1).to(h.dtype)[:, None]
        out = torch.empty_like(h)
        for start in range(0, h.size(0), INFERENCE_CHUNK):
            sl = slice(start, start + INFERENCE_CHUNK)
            out[sl] = self._update(h[sl], m[sl])
        return out

    def message(self, a_i: torch.Tensor, b_j: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(a_i + b_j + c)


class GraphTrunk(nn.Module):
    """Node embedding followed by ``layers`` edge-conditioned convolutions."""

    def __init__(self, in_dim: int, edge_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.convs = nn.ModuleList(EdgeConditionedConv(hidden, edge_dim) for _ in range(layers))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for conv in self.convs:
            h = conv(h, edge_index, edge_attr)
        return h


class GaussianHead(nn.Module):
    """Per-node mean and log-variance."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.lin = nn.Linear(hidden, 2 * latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.lin(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 6.0)


class FactorHead(nn.Module):
    """Values of G on S from the endpoint embeddings and the entry features.

    Off-diagonal entries are the raw output, diagonal entries exp(output)
    with the output clamped to [-20, 20]: G_ii > 0 for any input and weights.
    Zero-initialised output layer: G = I at start.
    """

    def __init__(self, hidden: int, extra_features: int = 0) -> None:
        super().__init__()
        self.lin_i = nn.Linear(hidden, hidden)
        self.lin_j = nn.Linear(hidden, hidden, bias=False)
        self.lin_s = nn.Linear(PATTERN_FEATURES + extra_features, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, s_index: torch.Tensor, s_attr: torch.Tensor,
                s_diag: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale``: per-entry factors of the raw output (before the diagonal's exp), or None."""
        i, j = s_index
        a, b = self.lin_i(h), self.lin_j(h)
        step = s_index.size(1) if torch.is_grad_enabled() else INFERENCE_CHUNK
        outs = []
        for start in range(0, s_index.size(1), max(step, 1)):
            sl = slice(start, start + step)
            t = torch.nn.functional.silu(a.index_select(0, i[sl]) + b.index_select(0, j[sl]) + self.lin_s(s_attr[sl]))
            outs.append(self.out(t).squeeze(-1))
        out = torch.cat(outs) if outs else torch.zeros(0)
        if scale is not None:
            out = out * scale
        return torch.where(s_diag, torch.exp(out.clamp(-20.0, 20.0)), out)


class GCVAE(nn.Module):
    """Encoder q(z|A,target), decoder p(G|z,A) and prior p(z|A)."""

    def __init__(self, config: GCVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GCVAEConfig()
        h, zd = config.hidden, config.latent
        self.encoder = GraphTrunk(NODE_FEATURES + TARGET_NODE_FEATURES, EDGE_FEATURES + TARGET_EDGE_FEATURES,
                                  h, config.encoder_layers)
        self.encoder_head = GaussianHead(h, zd)
        if config.conditional_prior:
            self.prior = GraphTrunk(NODE_FEATURES, EDGE_FEATURES, h, config.prior_layers)
            self.prior_head = GaussianHead(h, zd)
            nn.init.zeros_(self.prior_head.lin.weight)
            nn.init.zeros_(self.prior_head.lin.bias)
        if config.fsai_inputs and not config.residual:
            raise ValueError("GCVAEConfig.fsai_inputs needs residual=True (FSAI's values are the residual's base)")
        if config.spectral_gate and not config.residual:
            raise ValueError("GCVAEConfig.spectral_gate needs residual=True (a closed gate gives FSAI's factor)")
        if config.spectral_gate:  # (w0, w1) of the gate 1 + tanh(w0 φ + w1): 1 to start with
            self.spectral_gate = nn.Parameter(torch.zeros(2))
        extra = FSAI_INPUT_FEATURES if config.fsai_inputs else 0
        self.decoder = GraphTrunk(NODE_FEATURES + zd + extra, EDGE_FEATURES, h, config.decoder_layers)
        self.factor_head = FactorHead(h, extra)

    # -- the three distributions -------------------------------------------
    def prior_params(self, data: FactorGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z | A), per node."""
        if not self.config.conditional_prior:
            z = torch.zeros(data.num_nodes, self.config.latent, device=data.x.device, dtype=data.x.dtype)
            return z, z
        return self.prior_head(self.prior(data.x, data.edge_index, data.edge_attr))

    def encode(self, data: FactorGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | A, target), per node."""
        target = data.target
        diag_rows = data.s_index[0][data.s_diag]
        node_t = torch.zeros(data.num_nodes, 1, device=data.x.device)
        node_t[diag_rows, 0] = torch.log(target[data.s_diag].clamp_min(1e-6))
        # off-diagonal target values on the matching message edges (both directions)
        n = data.num_nodes
        off = ~data.s_diag
        r, c = data.s_index[0][off], data.s_index[1][off]
        s_keys = torch.cat([r * n + c, c * n + r])
        s_vals = torch.cat([target[off], target[off]])
        order = torch.argsort(s_keys)
        s_keys, s_vals = s_keys[order], s_vals[order]
        e_keys = data.edge_index[1] * n + data.edge_index[0]
        pos = torch.searchsorted(s_keys, e_keys).clamp(max=max(len(s_keys) - 1, 0))
        edge_t = torch.where(s_keys[pos] == e_keys, s_vals[pos], torch.zeros_like(e_keys, dtype=s_vals.dtype)) \
            if len(s_keys) else torch.zeros(len(e_keys))
        h = self.encoder(torch.cat([data.x, node_t], -1), data.edge_index,
                         torch.cat([data.edge_attr, edge_t[:, None]], -1))
        return self.encoder_head(h)

    def decode(self, data: FactorGraph, z: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) values of G on S, aligned with ``data.s_index``."""
        base = None
        if self.config.residual:
            base = getattr(data, "target", None)
            if base is None or len(base) != data.s_index.size(1):
                raise ValueError("a residual GCVAE needs FSAI's values on the pattern: build the graph with "
                                 "target=FSAI's values on S (pcgcvae.training.graph.build_graph(..., target=...))")
            base = base.to(z.dtype)
        x, s_attr = data.x, data.s_attr
        if self.config.fsai_inputs:
            node_f, entry_f = fsai_input_features(base, data.s_index[0], data.s_diag, data.num_nodes)
            x = torch.cat([x, z, node_f[:, None]], -1)
            s_attr = torch.cat([s_attr, entry_f[:, None].to(s_attr.dtype)], -1)
        else:
            x = torch.cat([x, z], -1)
        h = self.decoder(x, data.edge_index, data.edge_attr)
        scale = self.gate(data)
        if scale is not None:  # per graph -> per entry of S
            batch = getattr(data, "batch", None)
            scale = scale[batch[data.s_index[0]]] if batch is not None else scale.expand(data.s_index.size(1))
        out = self.factor_head(h, data.s_index, s_attr, data.s_diag, scale)
        if base is not None:  # about FSAI's factor F: G_ij = F_ij + out_ij, G_ii = F_ii exp(out_ii)
            return torch.where(data.s_diag, base * out, base + out)
        return out

    def gate(self, data: FactorGraph) -> torch.Tensor | None:
        """The problem-level gate of the correction, one value per graph (``GCVAEConfig.spectral_gate``;
        None without it): 1 + tanh(w0 φ + w1) with φ the graph's ``spectral`` (pcgcvae.spectrum)."""
        if not self.config.spectral_gate:
            return None
        phi = getattr(data, "spectral", None)
        if phi is None:
            raise ValueError("a GCVAE with spectral_gate needs the graph's spectral input: "
                             "pcgcvae.spectrum.spectral_feature of Â and FSAI's factor (graph.spectral)")
        w = self.spectral_gate
        return 1.0 + torch.tanh(w[0] * phi.to(w.dtype) + w[1])

    # -- generation ------------------------------------------------------------
    @torch.no_grad()
    def generate(self, data: FactorGraph, samples: int = 1, use_mean: bool = False,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Raw factors for ``samples`` latents drawn from the prior (or its mean)."""
        mu, logvar = self.prior_params(data)
        out = []
        for _ in range(samples if not use_mean else 1):
            if use_mean:
                z = mu
            else:
                eps = torch.randn(mu.shape, generator=generator)
                z = mu + torch.exp(0.5 * logvar) * eps
            out.append(self.decode(data, z))
        return out


def fsai_input_features(base: torch.Tensor, rows: torch.Tensor, diag: torch.Tensor,
                        num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's FSAI inputs (``GCVAEConfig.fsai_inputs``): log F_ii per node and, per entry of S,
    F_ij off the diagonal and log F_ii on it (``base``: FSAI's values on S; NumPy twin in
    :mod:`pcgcvae.inference`)."""
    log_base = torch.log(base.clamp_min(1e-30))
    node = torch.zeros(num_nodes, dtype=base.dtype, device=base.device)
    node[rows[diag]] = log_base[diag]
    return node, torch.where(diag, log_base, base)


def kl_divergence(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                  logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, summed over latent dims, per node."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0).sum(-1)
