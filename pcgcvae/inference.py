"""GCVAE inference with NumPy only: the run time of the learned preconditioner needs
neither torch nor torch_geometric.

:class:`NumpyGCVAE` holds the prior and decoder weights of a trained
:class:`pcgcvae.training.model.GCVAE` as float32 arrays and reproduces
:meth:`pcgcvae.training.model.GCVAE.generate` on the arrays of
:func:`pcgcvae.features.build_arrays`: the conditional prior (graph trunk + Gaussian
head), the decoder trunk and the factor head (exp-clamped diagonal).  Every
edge-conditioned convolution is

    h_i <- LayerNorm(h_i + MLP([h_i, m_i])),   m_i = mean_j silu(lin_i(h)_i + lin_j(h)_j + lin_e(e_ji)),

computed in chunks of consecutive target nodes (the edges are sorted by target), so a
chunk's segment sums are complete and only a few chunk-sized arrays are alive at a
time: memory stays linear in the graph with a small constant.

The weights come from a versioned ``.npz`` file (:func:`load_inference_model`; written by
``python -m pcgcvae.training.export``) holding every prior and decoder weight under its
``state_dict`` name and, under ``pcgcvae.json``, a JSON header: format tag and version,
package version, architecture and the checkpoint's full metadata.  A ``.pt`` checkpoint
is converted in memory when torch is importable.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._version import __version__
from .errors import CheckpointError
from .features import EDGE_FEATURES, FSAI_INPUT_FEATURES, NODE_FEATURES, PATTERN_FEATURES, GraphArrays
from .models_registry import resolve_model

FORMAT = "pcgcvae-gcvae-numpy"
FORMAT_VERSION = 1
HEADER_KEY = "pcgcvae.json"
# The GCVAEConfig fields (pcgcvae.training.model) and their types; "class" names the architecture.
ARCHITECTURE_FIELDS = {
    "hidden": int,
    "decoder_layers": int,
    "encoder_layers": int,
    "prior_layers": int,
    "latent": int,
    "conditional_prior": bool,
    "residual": bool,
    "fsai_inputs": bool,
    "spectral_gate": bool,
}
# fields that models exported before them lack, and their value
OPTIONAL_ARCHITECTURE = {"residual": False, "fsai_inputs": False, "spectral_gate": False}
REQUIRED_META = ("family", "block_sizes", "pattern_levels")
CHUNK = 1 << 15  # edges (or pattern entries, or nodes) per chunk
LAYER_NORM_EPS = 1e-5


# -- the weights and their shapes ------------------------------------------------
def _trunk_shapes(prefix: str, in_dim: int, hidden: int, layers: int) -> dict[str, tuple[int, ...]]:
    h = hidden
    shapes = {
        f"{prefix}.embed.0.weight": (h, in_dim), f"{prefix}.embed.0.bias": (h,),
        f"{prefix}.embed.2.weight": (h, h), f"{prefix}.embed.2.bias": (h,),
    }
    for k in range(layers):
        c = f"{prefix}.convs.{k}"
        shapes.update({
            f"{c}.lin_i.weight": (h, h), f"{c}.lin_i.bias": (h,), f"{c}.lin_j.weight": (h, h),
            f"{c}.lin_e.weight": (h, EDGE_FEATURES),
            f"{c}.update_mlp.0.weight": (h, 2 * h), f"{c}.update_mlp.0.bias": (h,),
            f"{c}.update_mlp.2.weight": (h, h), f"{c}.update_mlp.2.bias": (h,),
            f"{c}.norm.weight": (h,), f"{c}.norm.bias": (h,),
        })
    return shapes


def inference_weight_shapes(architecture: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` names and shapes of the weights inference needs (prior, decoder,
    factor head; not the encoder) for a GCVAE ``architecture`` (a GCVAEConfig dict)."""
    h, zd = architecture["hidden"], architecture["latent"]
    extra = FSAI_INPUT_FEATURES if architecture.get("fsai_inputs", False) else 0
    shapes: dict[str, tuple[int, ...]] = {}
    if architecture["conditional_prior"]:
        shapes.update(_trunk_shapes("prior", NODE_FEATURES, h, architecture["prior_layers"]))
        shapes.update({"prior_head.lin.weight": (2 * zd, h), "prior_head.lin.bias": (2 * zd,)})
    shapes.update(_trunk_shapes("decoder", NODE_FEATURES + zd + extra, h, architecture["decoder_layers"]))
    shapes.update({
        "factor_head.lin_i.weight": (h, h), "factor_head.lin_i.bias": (h,), "factor_head.lin_j.weight": (h, h),
        "factor_head.lin_s.weight": (h, PATTERN_FEATURES + extra), "factor_head.out.weight": (1, h),
        "factor_head.out.bias": (1,),
    })
    if architecture.get("spectral_gate", False):
        shapes["spectral_gate"] = (2,)
    return shapes


def check_architecture(architecture: Any, where: str) -> dict[str, Any]:
    """The architecture dict without its class, checked field by field (CheckpointError otherwise)."""
    if not isinstance(architecture, dict) or architecture.get("class") != "GCVAE":
        raise CheckpointError(f"'{where}' holds an unknown architecture {architecture!r}")
    arch = {**OPTIONAL_ARCHITECTURE, **{k: v for k, v in architecture.items() if k != "class"}}
    unknown = sorted(set(arch) - set(ARCHITECTURE_FIELDS))
    missing = sorted(set(ARCHITECTURE_FIELDS) - set(arch))
    if unknown or missing:
        raise CheckpointError(
            f"'{where}' has an architecture this pcgcvae {__version__} cannot build "
            f"(unknown fields {unknown}, missing fields {missing})"
        )
    for key, kind in ARCHITECTURE_FIELDS.items():
        value = arch[key]
        ok = isinstance(value, bool) if kind is bool else (isinstance(value, int) and not isinstance(value, bool))
        if not ok or (kind is int and value < (0 if key.endswith("_layers") else 1)):
            raise CheckpointError(f"'{where}': architecture field '{key}' = {value!r} is not a valid {kind.__name__}")
    for field in ("fsai_inputs", "spectral_gate"):
        if arch[field] and not arch["residual"]:
            raise CheckpointError(f"'{where}': architecture field '{field}' needs 'residual' "
                                  "(FSAI's values are its base)")
    return arch


# -- the forward pass ----------------------------------------------------------
def _silu_(x: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """x <- silu(x) = x sigmoid(x) = y + y tanh(y), y = x / 2, in place (``tmp``: a buffer of x's shape)."""
    x *= 0.5
    np.tanh(x, out=tmp)
    tmp *= x
    x += tmp
    return x


def _linear(x: np.ndarray, wt: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ wt
    if b is not None:
        y += b
    return y


class _Plan:
    """What the forward pass needs of a graph, computed once per call: per-node in-degrees,
    the CSR offsets of the (target-sorted) edges and the chunks of consecutive target nodes."""

    def __init__(self, arrays: GraphArrays, dtype: type = np.float32) -> None:
        n = arrays.num_nodes
        src, dst = arrays.edge_index
        if len(dst) > 1 and np.any(dst[1:] < dst[:-1]):
            raise ValueError("GraphArrays.edge_index must be sorted by target (pcgcvae.features.build_arrays)")
        itype = np.int32 if len(dst) < 2**31 else np.int64  # (half the memory of bincount's int64)
        counts = np.bincount(dst, minlength=n).astype(itype)
        self.n = n
        self.src = src
        self.counts = counts
        self.denominator = np.maximum(counts, 1).astype(dtype)[:, None]
        indptr = np.zeros(n + 1, dtype=itype)
        np.cumsum(counts, out=indptr[1:])
        self.indptr = indptr
        # node chunks [n0, n1): at most CHUNK nodes and CHUNK incoming edges (or one node)
        bounds = [0]
        while bounds[-1] < n:
            n0 = bounds[-1]
            n1 = int(np.searchsorted(indptr, indptr[n0] + CHUNK, side="right")) - 1  # last with <= CHUNK edges
            bounds.append(min(max(n1, n0 + 1), n, n0 + CHUNK))
        self.chunks = list(itertools.pairwise(bounds))
        # per chunk, the (nodes x edges) 0/1 matrix whose product with the edge messages sums every
        # node's consecutive incoming edges (scipy's CSR product: far faster than np.add.reduceat);
        # data and column indices are views of one shared array, so they cost O(n) in all
        ones, arange = np.ones(CHUNK, dtype=dtype), np.arange(CHUNK, dtype=np.int32)
        self.segments = []
        for n0, n1 in self.chunks:
            ne = int(indptr[n1] - indptr[n0])
            if ne > CHUNK:  # one node with more than CHUNK incoming edges
                data, cols = np.ones(ne, dtype=dtype), np.arange(ne, dtype=np.int64)
            else:
                data, cols = ones[:ne], arange[:ne]
            local = (indptr[n0:n1 + 1] - indptr[n0]).astype(cols.dtype)
            self.segments.append(sp.csr_array((data, cols, local), shape=(n1 - n0, ne)) if ne else None)


def _plan_of(arrays: GraphArrays, dtype: type) -> _Plan:
    """The graph's :class:`_Plan`, kept in its topology's cache (a function of the edges alone, so a
    setup with new values on the same structure reuses it)."""
    cache = arrays.topology.plans if arrays.topology is not None else None
    key = ("inference", np.dtype(dtype).str)
    if cache is not None and key in cache:
        return cache[key]
    plan = _Plan(arrays, dtype)
    if cache is not None:
        cache[key] = plan
    return plan


class _Trunk:
    """Node embedding followed by edge-conditioned convolutions (weights transposed, in the
    weights' floating type)."""

    def __init__(self, w: dict[str, np.ndarray], prefix: str, layers: int, split: int | None = None) -> None:
        t = _transposed
        self.dtype = w[f"{prefix}.embed.0.weight"].dtype
        self.embed0 = t(w[f"{prefix}.embed.0.weight"])
        self.split = split  # decoder: columns [0, split) read x, the rest z
        self.embed0_b = w[f"{prefix}.embed.0.bias"]
        self.embed2 = t(w[f"{prefix}.embed.2.weight"])
        self.embed2_b = w[f"{prefix}.embed.2.bias"]
        self.convs = []
        for k in range(layers):
            c = f"{prefix}.convs.{k}"
            h = w[f"{c}.lin_i.weight"].shape[0]
            u0 = t(w[f"{c}.update_mlp.0.weight"])
            self.convs.append({
                "lin_i": t(w[f"{c}.lin_i.weight"]), "lin_i_b": w[f"{c}.lin_i.bias"],
                "lin_j": t(w[f"{c}.lin_j.weight"]), "lin_e": t(w[f"{c}.lin_e.weight"]),
                "u0_h": np.ascontiguousarray(u0[:h]), "u0_m": np.ascontiguousarray(u0[h:]),
                "u0_b": w[f"{c}.update_mlp.0.bias"],
                "u2": t(w[f"{c}.update_mlp.2.weight"]), "u2_b": w[f"{c}.update_mlp.2.bias"],
                "norm_w": w[f"{c}.norm.weight"], "norm_b": w[f"{c}.norm.bias"],
            })
        self.hidden = self.embed2.shape[1]
        self.mean_vec = np.full(self.hidden, 1.0 / self.hidden, dtype=self.dtype)

    def __call__(self, arrays: GraphArrays, plan: _Plan, z: np.ndarray | None = None) -> np.ndarray:
        h = np.empty((plan.n, self.hidden), dtype=self.dtype)
        w0x = self.embed0 if self.split is None else self.embed0[: self.split]
        w0z = None if self.split is None else self.embed0[self.split:]
        for n0 in range(0, plan.n, CHUNK):
            sl = slice(n0, n0 + CHUNK)
            u = _linear(arrays.x[sl].astype(self.dtype, copy=False), w0x, self.embed0_b)
            if w0z is not None:
                u += z[sl] @ w0z
            h[sl] = _linear(_silu_(u, np.empty_like(u)), self.embed2, self.embed2_b)
        for conv in self.convs:
            h = self._conv(conv, h, arrays, plan)
        return h

    def _conv(self, p: dict[str, np.ndarray], h: np.ndarray, arrays: GraphArrays, plan: _Plan) -> np.ndarray:
        """One convolution, in place: once every source's part of the messages is taken, a chunk's rows
        of ``h`` are read only by that chunk, so its new values overwrite them."""
        b = h @ p["lin_j"]  # (n, hidden): every source's part of the message
        out = h
        src, indptr, counts = plan.src, plan.indptr, plan.counts
        hidden = self.hidden
        buf = np.empty((CHUNK, hidden), dtype=self.dtype)
        tmp = np.empty((CHUNK, hidden), dtype=self.dtype)
        for k, (n0, n1) in enumerate(plan.chunks):
            e0, e1 = int(indptr[n0]), int(indptr[n1])
            ne = e1 - e0
            hc = h[n0:n1]
            if ne:
                if ne > len(buf):  # one node with more than CHUNK incoming edges
                    buf = np.empty((ne, hidden), dtype=self.dtype)
                    tmp = np.empty((ne, hidden), dtype=self.dtype)
                t, tt = buf[:ne], tmp[:ne]
                np.matmul(arrays.edge_features(e0, e1).astype(self.dtype, copy=False), p["lin_e"], out=t)
                t += np.take(b, src[e0:e1], axis=0)
                t += np.repeat(_linear(hc, p["lin_i"], p["lin_i_b"]), counts[n0:n1], axis=0)
                _silu_(t, tt)
                m = plan.segments[k] @ t  # the sums over every node's incoming edges
                m /= plan.denominator[n0:n1]
            else:
                m = np.zeros((n1 - n0, hidden), dtype=self.dtype)
            u = hc @ p["u0_h"]
            u += m @ p["u0_m"]
            u += p["u0_b"]
            v = _linear(_silu_(u, m), p["u2"], p["u2_b"])
            v += hc
            self._layer_norm(v, p["norm_w"], p["norm_b"])
            out[n0:n1] = v
        return out

    def _layer_norm(self, v: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
        v -= (v @ self.mean_vec)[:, None]
        var = np.square(v) @ self.mean_vec
        var += LAYER_NORM_EPS
        np.sqrt(var, out=var)
        v /= var[:, None]
        v *= w
        v += b


def fsai_input_features(base: np.ndarray, rows: np.ndarray, diag: np.ndarray, num_nodes: int,
                        dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's FSAI inputs of a model with ``fsai_inputs``: log F_ii per node and, per entry of
    S, F_ij off the diagonal and log F_ii on it (``base``: FSAI's values on S; the torch twin is
    :func:`pcgcvae.training.model.fsai_input_features`)."""
    base = np.asarray(base, dtype=dtype)
    entry = base.copy()
    entry[diag] = np.log(np.maximum(base[diag], dtype(1e-30)))
    node = np.zeros(num_nodes, dtype=dtype)
    node[rows[diag]] = entry[diag]
    return node, entry


def _transposed(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


class NumpyGCVAE:
    """The prior and decoder of a GCVAE in NumPy (see the module docstring).

    ``weights``: the ``state_dict`` arrays named by :func:`inference_weight_shapes`;
    ``architecture``: the GCVAEConfig dict (``class`` optional); ``dtype``: the floating
    type of the computation (float32, the run time's; float64 to compare with a float64
    torch model to round-off).
    """

    def __init__(self, weights: dict[str, np.ndarray], architecture: dict[str, Any],
                 dtype: type = np.float32) -> None:
        arch = check_architecture({"class": "GCVAE", **architecture}, "the given architecture")
        self.architecture = arch
        expected = inference_weight_shapes(arch)
        check_weights(weights, expected, "the given weights")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"NumpyGCVAE computes in float32 or float64, not {np.dtype(dtype)}")
        self.dtype = np.dtype(dtype).type
        w = {k: np.ascontiguousarray(weights[k], dtype=self.dtype) for k in expected}
        self.latent = arch["latent"]
        self.conditional_prior = arch["conditional_prior"]
        if self.conditional_prior:
            self.prior = _Trunk(w, "prior", arch["prior_layers"])
            self.prior_head_w = _transposed(w["prior_head.lin.weight"])
            self.prior_head_b = w["prior_head.lin.bias"]
        self.decoder = _Trunk(w, "decoder", arch["decoder_layers"], split=NODE_FEATURES)
        self.fh_lin_i = _transposed(w["factor_head.lin_i.weight"])
        self.fh_lin_i_b = w["factor_head.lin_i.bias"]
        self.fh_lin_j = _transposed(w["factor_head.lin_j.weight"])
        self.fh_lin_s = _transposed(w["factor_head.lin_s.weight"])
        self.fh_out = np.ascontiguousarray(w["factor_head.out.weight"][0])
        self.fh_out_b = self.dtype(w["factor_head.out.bias"][0])
        self.residual = arch["residual"]
        self.fsai_inputs = arch["fsai_inputs"]
        self.spectral_gate = w["spectral_gate"] if arch["spectral_gate"] else None

    # -- the two distributions ------------------------------------------------------
    def prior_params(self, arrays: GraphArrays, plan: _Plan | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and log-variance of p(z | A), per node ((n, latent) each, in ``self.dtype``)."""
        n = arrays.num_nodes
        if not self.conditional_prior:
            z = np.zeros((n, self.latent), dtype=self.dtype)
            return z, z
        h = self.prior(arrays, plan or _plan_of(arrays, self.dtype))
        out = _linear(h, self.prior_head_w, self.prior_head_b)
        mu, logvar = out[:, : self.latent], out[:, self.latent:]
        return np.ascontiguousarray(mu), np.clip(logvar, -10.0, 6.0)

    def gate(self, spectral: float | None) -> float | None:
        """The correction's problem-level gate 1 + tanh(w0 φ + w1) for φ = ``spectral``
        (:func:`pcgcvae.spectrum.spectral_feature`); None for a model without one."""
        if self.spectral_gate is None:
            return None
        if spectral is None:
            raise ValueError("a GCVAE with a spectral gate needs the spectral input "
                             "(pcgcvae.spectrum.spectral_feature of Â and FSAI's factor)")
        w0, w1 = self.spectral_gate
        return self.dtype(1.0 + np.tanh(w0 * self.dtype(spectral) + w1))

    def decode(self, arrays: GraphArrays, z: np.ndarray, plan: _Plan | None = None,
               base: np.ndarray | None = None, spectral: float | None = None) -> np.ndarray:
        """Raw values of G on S (``self.dtype``, aligned with ``arrays.s_index``) for the latent ``z``;
        a residual model (``self.residual``) corrects ``base``, FSAI's values on S (required then);
        ``spectral``: the problem-level input of a model with a spectral gate."""
        if self.residual and (base is None or len(base) != len(arrays.s_index[0])):
            raise ValueError("a residual GCVAE needs FSAI's values on the pattern (base), one per entry of S")
        gate = self.gate(spectral)
        rows, cols = arrays.s_index
        diag = arrays.s_diag
        entry_f = None
        if self.fsai_inputs:  # the decoder's inputs after x: z, then log F_ii (fsai_input_features)
            node_f, entry_f = fsai_input_features(base, rows, diag, arrays.num_nodes, self.dtype)
            z = np.concatenate([np.asarray(z, dtype=self.dtype), node_f[:, None]], axis=1)
        z = np.ascontiguousarray(z, dtype=self.dtype)
        h = self.decoder(arrays, plan or _plan_of(arrays, self.dtype), z)
        b = h @ self.fh_lin_j
        # the head's node terms overwrite the hidden states block by block (one n x hidden array less)
        a = h if self.fh_lin_i.shape[1] == h.shape[1] else np.empty((len(h), self.fh_lin_i.shape[1]), self.dtype)
        for n0 in range(0, len(h), CHUNK):
            a[n0:n0 + CHUNK] = _linear(h[n0:n0 + CHUNK], self.fh_lin_i, self.fh_lin_i_b)
        del h
        nnz = len(rows)
        lin_s = self.fh_lin_s[:PATTERN_FEATURES]
        out = np.empty(nnz, dtype=self.dtype)
        hidden = a.shape[1]
        buf = np.empty((CHUNK, hidden), dtype=self.dtype)
        tmp = np.empty((CHUNK, hidden), dtype=self.dtype)
        for p0 in range(0, nnz, CHUNK):
            p1 = min(p0 + CHUNK, nnz)
            t, tt = buf[: p1 - p0], tmp[: p1 - p0]
            np.matmul(arrays.pattern_features(p0, p1).astype(self.dtype, copy=False), lin_s, out=t)
            if entry_f is not None:
                t += entry_f[p0:p1, None] * self.fh_lin_s[PATTERN_FEATURES]
            t += np.take(a, rows[p0:p1], axis=0)
            t += np.take(b, cols[p0:p1], axis=0)
            np.matmul(_silu_(t, tt), self.fh_out, out=out[p0:p1])
        out += self.fh_out_b
        if gate is not None:
            out *= gate
        out[diag] = np.exp(np.clip(out[diag], -20.0, 20.0))
        if self.residual:  # G_ij = F_ij + out_ij, G_ii = F_ii exp(out_ii)
            out[diag] *= base[diag]
            off = ~diag
            out[off] += base[off]
        return out

    # -- generation ---------------------------------------------------------------------
    def generate(self, arrays: GraphArrays, samples: int = 1, use_mean: bool = False,
                 rng: np.random.Generator | None = None, base: np.ndarray | None = None,
                 spectral: float | None = None) -> list[np.ndarray]:
        """Raw factors (``self.dtype``, aligned with ``arrays.s_index``) for ``samples`` latents drawn
        from the prior with ``rng`` (or one factor for the prior mean, ``use_mean``); ``base``: FSAI's
        values on S, which a residual model corrects; ``spectral``: the input of a spectral gate."""
        plan = _plan_of(arrays, self.dtype)
        mu, logvar = self.prior_params(arrays, plan)
        if use_mean:
            del logvar  # (n x latent: not needed for the prior mean)
        if not use_mean and rng is None:
            rng = np.random.default_rng()
        out = []
        for _ in range(samples if not use_mean else 1):
            if use_mean:
                z = mu
            else:
                z = rng.standard_normal(mu.shape, dtype=self.dtype)
                z *= np.exp(0.5 * logvar)
                z += mu
            out.append(self.decode(arrays, z, plan, base, spectral))
        return out


# -- the file format ----------------------------------------------------------------
def check_weights(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Every expected weight present with its shape and a real floating dtype, nothing else."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"'{where}': weights do not match the recorded architecture (missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''})"
        )
    for k, shape in expected.items():
        w = np.asarray(weights[k])
        if w.shape != shape:
            raise CheckpointError(f"'{where}': weight '{k}' has shape {w.shape}, the architecture needs {shape}")
        if w.dtype.kind != "f":
            raise CheckpointError(f"'{where}': weight '{k}' has dtype {w.dtype}, not a floating type")
        if not np.all(np.isfinite(w)):
            raise CheckpointError(f"'{where}': weight '{k}' has non-finite values")


def make_header(architecture: dict[str, Any], meta: dict[str, Any], source: dict[str, Any] | None = None) -> dict:
    """The JSON header of an exported model."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "architecture": {"class": "GCVAE", **{k: v for k, v in architecture.items() if k != "class"}},
        "meta": meta,
        "source": source or {},
    }


def save_inference_model(path: str | os.PathLike, weights: dict[str, np.ndarray], header: dict[str, Any]) -> None:
    """Write an ``.npz`` model: the weights (float32) and the JSON header, byte-for-byte
    reproducible (fixed member order and time stamps), atomically."""
    arch = check_architecture(header.get("architecture"), str(path))
    expected = inference_weight_shapes(arch)
    check_weights(weights, expected, str(path))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        members = [(HEADER_KEY, np.array(json.dumps(header, sort_keys=True)))]
        members += [(k, np.ascontiguousarray(weights[k], dtype=np.float32)) for k in sorted(expected)]
        for name, arr in members:
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def read_inference_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and validate an ``.npz`` model: its weights and header (CheckpointError otherwise)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
            if HEADER_KEY not in files:
                raise CheckpointError(f"'{path}' is not a pcgcvae GCVAE model (no '{HEADER_KEY}' header: foreign file)")
            header_text = str(npz[HEADER_KEY])
            arrays = {k: npz[k] for k in files - {HEADER_KEY}}
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read GCVAE model '{path}': corrupt or not an .npz file ({exc})") from exc
    try:
        header = json.loads(header_text)
    except ValueError as exc:
        raise CheckpointError(f"'{path}': its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a pcgcvae GCVAE model (format {header.get('format')!r}: foreign file)"
                              if isinstance(header, dict) else f"'{path}' is not a pcgcvae GCVAE model")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has model format version {header.get('format_version')}, this pcgcvae "
            f"{__version__} reads version {FORMAT_VERSION}; export it again with 'python -m pcgcvae.training.export' "
            "from its .pt checkpoint, or use a matching pcgcvae"
        )
    arch = check_architecture(header.get("architecture"), str(path))
    check_weights(arrays, inference_weight_shapes(arch), str(path))
    _check_meta(header.get("meta"), str(path))
    return arrays, header


def _check_meta(meta: Any, where: str) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{where}' has no metadata")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"'{where}' lacks metadata {missing}")


def _from_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(
            f"'{path}' is a torch checkpoint (.pt): reading it needs torch (pip install pcgcvae[train]); "
            f"or export it once where torch is installed, 'python -m pcgcvae.training.export {path}', "
            "and give the .npz file"
        ) from exc
    from .training.export import checkpoint_to_numpy

    return checkpoint_to_numpy(path)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> tuple[NumpyGCVAE, dict[str, Any]]:
    p = Path(path)
    if p.suffix == ".pt":
        weights, header = _from_checkpoint(p)
    else:
        weights, header = read_inference_model(p)
    arch = {k: v for k, v in header["architecture"].items() if k != "class"}
    return NumpyGCVAE(weights, arch), header


def load_inference_model(name_or_path: str | os.PathLike) -> tuple[NumpyGCVAE, dict[str, Any]]:
    """A shipped model name (its ``.npz``; its ``.pt`` if no ``.npz`` is installed) or a
    path: ``.npz`` directly, ``.pt`` converted in memory (needs torch).  Returns the model and
    its header (``format``, ``format_version``, ``package_version``, ``architecture``, ``meta``,
    ``source``); cached per file version, so a process loads a file once."""
    path = resolve_model(str(name_or_path), (".npz", ".pt"))
    st = path.stat()
    return _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)
