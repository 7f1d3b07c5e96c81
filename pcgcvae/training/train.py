"""Training the GCVAE on a generated dataset.

    python -m pcgcvae.training.train --data data/poisson --family poisson \\
        --out pcgcvae/models/poisson.pt --minutes 40 --seed 0

Loss per graph: quality of the decoded factor (Kaporin gap to FSAI by
default, or the paper's Frobenius SPAI objective) + β·KL(q(z|A,target) ||
p(z|A)) (+ an optional reconstruction term to the FSAI target).  Batches of
graphs; deterministic for a seed; resumable (``--resume``); a progress bar
with running losses; a loss-curve PNG next to the checkpoint; held-out
evaluation on larger Firedrake problems at the end (``--heldout``), recorded
in the checkpoint and a model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..ordering import recorded_ordering
from .checkpoint import load_checkpoint, save_checkpoint
from .model import GCVAE, GCVAEConfig, kl_divergence
from .quality import (
    cg_rate_per_graph,
    condition_graphs,
    frobenius_per_node,
    kaporin_per_graph,
    log_condition_per_graph,
    normalise_rows,
    scaled_operator_triplets,
)

FAMILY_BLOCK_SIZES = {"poisson": [1], "elasticity": [2, 3]}


def gcvae_loss(model: GCVAE, batch, beta: float, recon: float = 0.0, objective: str = "kaporin",  # noqa: ANN001
               generator: torch.Generator | None = None, cond_weight: float = 0.0,
               cond_max_n: int = 1200, gate_penalty: float = 0.0,
               cond_hinge: float = 0.0, cg_weight: float = 0.0,
               cg_probes: int = 4, cg_checkpoint: int = 0,
               terms_on: str = "posterior") -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of a batch and its parts (floats, for logging).

    ``cond_hinge`` > 0 adds that multiple of the batch's mean max(0, log cond(G Â Gᵀ) - log cond(F Â Fᵀ))
    over the same graphs (F: FSAI, the graphs' ``fsai_log_cond`` from :func:`fsai_log_conditions`): a price
    on being worse than FSAI, graph by graph, where the mean log cond lets wins pay for losses.

    ``gate_penalty`` > 0 (models with a spectral gate) adds that multiple of the batch's mean gate:
    a price on the correction's size, so that the gate closes where the correction buys nothing (the
    objectives are flat there) and stays open where it lowers the condition number by more.

    ``cg_weight`` > 0 adds that multiple of the batch's mean predicted iteration ratio to FSAI, rate(F) / rate(G),
    from ``cg_probes`` CG runs per graph with each factor on the same fresh random solutions, unrolled
    over the graph's ``cg_steps`` (:func:`fsai_cg_steps`; graphs with 0 are left out):
    :func:`pcgcvae.training.quality.cg_rate_per_graph`.

    ``cond_weight`` > 0 adds that multiple of the mean log cond(G Â Gᵀ) over the batch's graphs
    with at most ``cond_max_n`` nodes (dense eigenvalues) whose ``cond`` flag is set (all when the
    batch has none: ``--kaporin-only`` datasets clear it).

    ``terms_on`` says which factor the condition and CG terms (``cond_weight``, ``cond_hinge``, ``cg_weight``)
    judge: ``"posterior"``, the one decoded from a latent drawn from q(z | A, F) (the Kaporin term's), or
    ``"prior-mean"``, the one decoded from the prior's mean -- the factor ``GCVAEPC`` ships by default.
    """
    mu_q, lv_q = model.encode(batch)
    mu_p, lv_p = model.prior_params(batch)
    eps = torch.randn(mu_q.shape, generator=generator)
    z = mu_q + torch.exp(0.5 * lv_q) * eps
    g = normalise_rows(model.decode(batch, z), batch)
    gap = (kaporin_per_graph(g, batch) - batch.target_score).mean()
    kl = kl_divergence(mu_q, lv_q, mu_p, lv_p).mean()
    if objective == "kaporin":
        quality = gap
    elif objective == "frobenius":
        ea = batch.edge_attr
        in_a = ea[:, 2] > 0
        idx = torch.cat([batch.edge_index[:, in_a].flip(0),
                         torch.arange(batch.num_nodes).repeat(2, 1)], dim=1)
        val = torch.cat([ea[in_a, 0], torch.ones(batch.num_nodes)])
        quality = frobenius_per_node(g, batch, idx, val, generator=generator)
    else:
        raise ValueError(f"unknown objective '{objective}' (kaporin, frobenius)")
    loss = quality + beta * kl
    rec = torch.mean((g - batch.target) ** 2)
    if recon > 0:
        loss = loss + recon * rec
    parts = {}
    if terms_on not in ("posterior", "prior-mean"):
        raise ValueError(f"unknown terms_on '{terms_on}' (posterior, prior-mean)")
    judged = g  # the factor the condition and CG terms judge (decoded again only when they run)
    if terms_on == "prior-mean" and (cond_weight > 0 or cg_weight > 0):
        judged = normalise_rows(model.decode(batch, mu_p), batch)
    if cond_weight > 0:
        log_cond = log_condition_per_graph(judged, batch, cond_max_n, getattr(batch, "cond", None))
        if len(log_cond):
            loss = loss + cond_weight * log_cond.mean().to(loss.dtype)
            parts["log_cond"] = log_cond.mean().item()
            if cond_hinge > 0:
                kept = condition_graphs(batch, cond_max_n, getattr(batch, "cond", None))  # log_cond's graphs
                excess = torch.relu(log_cond - batch.fsai_log_cond[kept].to(log_cond.dtype))
                loss = loss + cond_hinge * excess.mean().to(loss.dtype)
                parts["cond_excess"] = excess.mean().item()
    if cg_weight > 0:
        ratio = cg_iteration_ratio(judged, batch, cg_probes, generator, cg_checkpoint)
        if ratio is not None:
            loss = loss + cg_weight * ratio.mean().to(loss.dtype)
            parts["cg_ratio"] = ratio.mean().item()
    gate = model.gate(batch)
    if gate is not None:
        parts["gate"] = gate.mean().item()
        if gate_penalty > 0:
            loss = loss + gate_penalty * gate.mean().to(loss.dtype)
    return loss, {"loss": loss.item(), "kaporin_gap": gap.item(), "kl": kl.item(), "recon": rec.item(), **parts}


def fsai_log_conditions(graphs: list, max_n: int) -> None:
    """Store on every graph log cond(F Â Fᵀ) of its FSAI factor (the graph's target), once, for
    ``--cond-hinge`` (nan for graphs above ``max_n`` nodes, which the condition term skips)."""
    with torch.no_grad():
        for g in graphs:
            v = log_condition_per_graph(g.target, g, max_n)
            g.fsai_log_cond = v.reshape(1) if len(v) else torch.tensor([float("nan")], dtype=torch.float64)


def cg_iteration_ratio(g: torch.Tensor, batch, probes: int,  # noqa: ANN001
                       generator: torch.Generator | None = None, checkpoint_every: int = 0) -> torch.Tensor | None:
    """Per graph with ``cg_steps`` > 0, the predicted CG iterations of the factor ``g`` over FSAI's (the
    graphs' ``target``): rate(F) / rate(G), both on the same ``probes`` random solutions x* (None when no
    graph of the batch has steps; ``checkpoint_every``: :func:`cg_rate_per_graph`'s)."""
    steps = batch.cg_steps.reshape(-1)
    if not bool((steps > 0).any()):
        return None
    xstar = torch.randn(batch.num_nodes, probes, generator=generator, dtype=torch.float64)
    run = torch.where(steps > 0, steps, torch.ones_like(steps))
    rate_g = cg_rate_per_graph(g, batch, run, xstar, checkpoint_every=checkpoint_every)
    with torch.no_grad():
        rate_f = cg_rate_per_graph(batch.target, batch, run, xstar)
    keep = steps > 0
    return rate_f[keep] / torch.clamp(rate_g[keep], max=-1e-6)


def fsai_cg_steps(graphs: list, fraction: float, max_n: int, max_steps: int = 10**9, rtol: float = 1e-8) -> None:
    """Store on every graph ``cg_steps``: ``fraction`` of FSAI's CG iterations to ``rtol`` on a random right-hand
    side (scipy's CG on Â with M = Fᵀ F, F the graph's target), at least 1 and at most ``max_steps`` (the
    unrolled steps' memory); 0 for graphs above ``max_n`` nodes."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, cg

    rng = np.random.default_rng(0)
    for g in graphs:
        n = g.num_nodes
        if n > max_n:
            g.cg_steps = torch.tensor([0])
            continue
        r, c, v = (t.numpy() for t in scaled_operator_triplets(g))
        a = sp.csr_matrix((v, (r, c)), shape=(n, n))
        rows, cols = g.s_index.numpy()
        f = sp.csr_matrix((g.target.double().numpy(), (rows, cols)), shape=(n, n))
        m = LinearOperator((n, n), matvec=lambda x, f=f: f.T @ (f @ x), dtype=np.float64)
        count = [0]
        cg(a, rng.standard_normal(n), rtol=rtol, atol=0.0, M=m, maxiter=20 * n,
           callback=lambda _x, count=count: count.__setitem__(0, count[0] + 1))
        g.cg_steps = torch.tensor([min(max_steps, max(1, round(fraction * count[0])))])


def load_datasets(paths: list[Path], levels: list[int], kaporin_only: list[Path] = ()) -> tuple[list, dict]:
    """The graphs of several dataset directories and one index describing them all
    (size range over all; the dataset seed, or the list of seeds).  Every graph carries ``cond``
    (a one-element bool tensor): False for the datasets in ``kaporin_only``, whose graphs the
    condition-number term leaves out."""
    unknown = [str(k) for k in kaporin_only if Path(k).resolve() not in {Path(p).resolve() for p in paths}]
    if unknown:
        raise ValueError(f"--kaporin-only names datasets that are not in --data: {unknown}")
    graphs, indexes = [], []
    skip = {Path(k).resolve() for k in kaporin_only}
    for path in paths:
        g, index = load_dataset(path, levels)
        cond = torch.tensor([Path(path).resolve() not in skip])
        for graph in g:
            graph.cond = cond
        graphs += g
        indexes.append({**index, "kaporin_only": not bool(cond)})
    datasets = [{"seed": i["seed"], "count": len(i["samples"]), "size_range": i["size_range"],
                 "broad": bool(i.get("broad", False)), "dim": i.get("dim"),
                 **({"stencils": True} if i.get("stencils") else {}),
                 **({"mass": True} if i.get("mass") else {}),
                 **({"kaporin_only": True} if i["kaporin_only"] else {})} for i in indexes]
    if len(indexes) == 1:
        return graphs, {**indexes[0], "datasets": datasets}
    families = {i["family"] for i in indexes}
    if len(families) > 1:
        raise ValueError(f"datasets of different families cannot be mixed: {sorted(families)}")
    orderings = {recorded_ordering(i) for i in indexes}
    if len(orderings) > 1:
        raise ValueError(f"datasets of different local orderings cannot be mixed: {sorted(orderings)}")
    return graphs, {"family": families.pop(), "ordering": orderings.pop(),
                    "samples": [s for i in indexes for s in i["samples"]],
                    "size_range": [min(i["size_range"][0] for i in indexes), max(i["size_range"][1] for i in indexes)],
                    "seed": [i["seed"] for i in indexes], "datasets": datasets}


def load_dataset(path: Path, levels: list[int]) -> tuple[list, dict]:
    """All graphs of a dataset directory (one per sample and pattern level)."""
    from .dataset import load_sample

    index = json.loads((path / "index.json").read_text())
    graphs = [load_sample(path / s["file"], level) for s in index["samples"] for level in levels]
    return graphs, index


def _plot_losses(history: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].semilogy(ep, [max(h["kaporin_gap"], 1e-8) for h in history], label="train")
    ax[0].semilogy(ep, [max(h["val_gap"], 1e-8) for h in history], label="validation (prior mean)")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("Kaporin gap to FSAI")
    ax[0].legend()
    ax[1].plot(ep, [h["kl"] for h in history])
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("KL per node")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


@torch.no_grad()
def validation_gap(model: GCVAE, graphs: list) -> float:
    """Mean Kaporin gap to FSAI of the prior-mean factor over ``graphs``."""
    gaps = []
    for g in graphs:
        mu, _ = model.prior_params(g)
        gn = normalise_rows(model.decode(g, mu), g)
        gaps.append(float(kaporin_per_graph(gn, g)[0] - g.target_score[0]))
    return float(np.mean(gaps)) if gaps else float("nan")


def train(args: argparse.Namespace) -> Path:
    from torch_geometric.loader import DataLoader
    from tqdm import tqdm

    if args.heldout_3d and args.family != "elasticity":
        raise ValueError(f"--heldout-3d needs --family elasticity (3D problems), not {args.family}")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cond_hinge > 0 and args.cond_weight <= 0:
        raise ValueError("--cond-hinge needs --cond-weight > 0 (it compares the condition term's values)")
    graphs, index = load_datasets(args.data, args.levels, args.kaporin_only)
    if index["family"] != args.family:
        raise ValueError(f"--family {args.family}, but the dataset holds {index['family']} problems "
                         f"({' '.join(map(str, args.data))})")
    if args.cond_hinge > 0:
        fsai_log_conditions(graphs, args.cond_max_n)
    if args.cg_weight > 0:
        fsai_cg_steps(graphs, args.cg_fraction, args.cg_max_n, args.cg_max_steps)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(graphs))
    n_val = max(1, len(graphs) // 10)
    val = [graphs[i] for i in order[:n_val]]
    train_set = [graphs[i] for i in order[n_val:]]
    if args.init is not None:  # fine-tune: architecture and weights from a checkpoint
        model = load_checkpoint(args.init)[0].train().to(device)
        if args.residual and not model.config.residual:  # its trunks, a zero correction to FSAI to start from
            model.config.residual = True
            torch.nn.init.zeros_(model.factor_head.out.weight)
            torch.nn.init.zeros_(model.factor_head.out.bias)
        if args.fsai_inputs and not model.config.fsai_inputs:
            model = with_fsai_inputs(model).train().to(device)
        if args.spectral_gate and not model.config.spectral_gate:
            model = with_spectral_gate(model).train().to(device)
    else:
        config = GCVAEConfig(hidden=args.hidden, decoder_layers=args.layers, prior_layers=args.prior_layers,
                             latent=args.latent, residual=args.residual, fsai_inputs=args.fsai_inputs,
                             spectral_gate=args.spectral_gate)
        model = GCVAE(config).to(device)
    gate = [p for n, p in model.named_parameters() if n == "spectral_gate"]
    rest = [p for n, p in model.named_parameters() if n != "spectral_gate"]
    groups = [{"params": rest}] + ([{"params": gate, "lr": args.gate_lr or args.lr}] if gate else [])
    opt = torch.optim.Adam(groups, lr=args.lr)
    state_path = Path(f"{args.out}.state")
    history: list[dict] = []
    start_epoch = 0
    elapsed = 0.0
    if args.resume and state_path.is_file():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        history, start_epoch, elapsed = st["history"], st["epoch"], st["elapsed"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed from {state_path} at epoch {start_epoch}")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1), eta_min=args.lr / 20)
    if start_epoch:
        sched.load_state_dict(st["scheduler"])
    # A resumed run reseeds its shuffling from the epoch it resumes at (deterministic, not bit-identical
    # to an uninterrupted run).
    gen = torch.Generator().manual_seed(args.seed + start_epoch)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, generator=gen)
    t_start = time.perf_counter() - elapsed
    for epoch in range(start_epoch, args.epochs):
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.quiet, leave=False)
        for b in bar:
            b = b.to(device)
            loss, parts = gcvae_loss(model, b, args.beta, args.recon, args.objective, generator=gen,
                                     cond_weight=args.cond_weight, cond_max_n=args.cond_max_n,
                                     gate_penalty=args.gate_penalty, cond_hinge=args.cond_hinge,
                                     cg_weight=args.cg_weight, cg_probes=args.cg_probes,
                                     cg_checkpoint=args.cg_checkpoint, terms_on=args.terms_on)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (bar.n + 1):.2e}" for k, v in sums.items()})
        sched.step()
        model.eval()
        rec = {"epoch": epoch + 1, **{k: v / len(loader) for k, v in sums.items()},
               "val_gap": validation_gap(model, val), "seconds": time.perf_counter() - t_start}
        history.append(rec)
        # one line per epoch, also with --quiet (which only hides the progress bar)
        print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": history,
                    "epoch": epoch + 1, "elapsed": time.perf_counter() - t_start,
                    "torch_rng": torch.get_rng_state()}, state_path)
        if args.minutes and (time.perf_counter() - t_start) > 60 * args.minutes:
            print(f"time limit of {args.minutes} minutes reached after epoch {epoch + 1}")
            break
    model = model.cpu().eval()
    meta = {
        "family": args.family,
        "block_sizes": FAMILY_BLOCK_SIZES[args.family],
        "pattern_levels": args.levels,
        "ordering": recorded_ordering(index),
        "training": {
            "data": " ".join(map(str, args.data)), "samples": len(index["samples"]), "size_range": index["size_range"],
            "n_range": [min(s["n"] for s in index["samples"]), max(s["n"] for s in index["samples"])],
            "dataset_seed": index["seed"], "datasets": index.get("datasets"), "seed": args.seed,
            "epochs": len(history), "lr": args.lr, "gate_lr": args.gate_lr, "gate_penalty": args.gate_penalty,
            "cond_hinge": args.cond_hinge, "cg_weight": args.cg_weight, "cg_fraction": args.cg_fraction,
            "cg_probes": args.cg_probes, "cg_max_n": args.cg_max_n, "cg_max_steps": args.cg_max_steps,
            "cg_checkpoint": args.cg_checkpoint, "terms_on": args.terms_on,
            "batch_size": args.batch_size, "beta": args.beta, "recon": args.recon, "objective": args.objective,
            "cond_weight": args.cond_weight, "cond_max_n": args.cond_max_n,
            "kaporin_only": [str(k) for k in args.kaporin_only],
            "init": None if args.init is None else str(args.init),
            "minutes": round((time.perf_counter() - t_start) / 60, 1), "device": device,
            "package_version": __version__,
            "command": "python -m pcgcvae.training.train " + " ".join(getattr(args, "argv", None) or []),
        },
        "validation_gap": history[-1]["val_gap"] if history else None,
    }
    save_checkpoint(args.out, model, meta)
    if history:
        _plot_losses(history, Path(args.out).with_suffix(".loss.png"))
    if args.heldout or args.heldout_3d:
        from .heldout import record_heldout

        record_heldout(Path(args.out), model, meta, history, args.heldout, seed=args.seed + 1000,
                       samples=args.heldout_samples, sizes_3d=args.heldout_3d)
    print(f"saved {args.out}")
    return Path(args.out)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m pcgcvae.training.train``."""
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.training.train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", required=True,
                    help="dataset directories (python -m pcgcvae.training.dataset); several are trained on together")
    ap.add_argument("--family", choices=sorted(FAMILY_BLOCK_SIZES), required=True)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=0.0, help="stop after this much training time")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--beta", type=float, default=0.01, help="weight of the KL term")
    ap.add_argument("--recon", type=float, default=0.0, help="weight of the reconstruction term")
    ap.add_argument("--objective", choices=["kaporin", "frobenius"], default="kaporin")
    ap.add_argument("--cond-weight", type=float, default=0.0,
                    help="add this multiple of log cond(G Â Gᵀ) (graphs with <= --cond-max-n nodes)")
    ap.add_argument("--cond-max-n", type=int, default=1200,
                    help="largest graph the condition term is computed on (dense eigenvalues up to 1200 nodes, "
                         "sparse extremal eigenvectors above)")
    ap.add_argument("--kaporin-only", type=Path, nargs="*", default=[],
                    help="datasets among --data whose graphs get the Kaporin objective alone (no condition term)")
    ap.add_argument("--init", type=Path, default=None, help="start from this checkpoint (fine-tuning)")
    ap.add_argument("--residual", action="store_true",
                    help="the decoder corrects FSAI's factor instead of the identity (with --init: that network's "
                         "trunks and a zero correction to start from)")
    ap.add_argument("--fsai-inputs", action="store_true",
                    help="(with --residual) the decoder also reads FSAI's values (log F_ii per node, F_ij per entry); "
                         "with --init from a model without them: the same network, zero weights on the new inputs")
    ap.add_argument("--spectral-gate", action="store_true",
                    help="(with --residual) scale the correction by a learned gate of log κ(F Â Fᵀ) "
                         "(pcgcvae.spectrum); with --init from a model without it: the same network, gate 1")
    ap.add_argument("--cond-hinge", type=float, default=0.0,
                    help="add this multiple of the mean max(0, log cond(G A G^T) - log cond(F A F^T)) per graph "
                         "(F: FSAI): a price on being worse than FSAI (needs --cond-weight > 0)")
    ap.add_argument("--cg-weight", type=float, default=0.0,
                    help="add this multiple of the predicted CG iterations over FSAI's, from unrolled CG runs with "
                         "both factors (cg_iteration_ratio)")
    ap.add_argument("--cg-fraction", type=float, default=0.75,
                    help="--cg-weight: unrolled steps per graph as a fraction of FSAI's iterations to 1e-8")
    ap.add_argument("--cg-probes", type=int, default=4, help="--cg-weight: random solutions x* per graph")
    ap.add_argument("--cg-max-n", type=int, default=3000, help="--cg-weight: largest graph the CG term runs on")
    ap.add_argument("--cg-max-steps", type=int, default=100,
                    help="--cg-weight: most unrolled steps per graph (their memory grows with the steps)")
    ap.add_argument("--cg-checkpoint", type=int, default=0,
                    help="--cg-weight: keep the CG state every this many steps and recompute the rest in the backward "
                         "pass (memory / this factor; 0: keep every step)")
    ap.add_argument("--terms-on", choices=("posterior", "prior-mean"), default="posterior",
                    help="the factor the condition and CG terms judge: decoded from a posterior sample (as the "
                         "Kaporin term) or from the prior's mean (what GCVAEPC ships)")
    ap.add_argument("--gate-penalty", type=float, default=0.0,
                    help="add this multiple of the mean spectral gate to the loss (a price on the correction)")
    ap.add_argument("--gate-lr", type=float, default=None,
                    help="learning rate of the spectral gate's two weights (default: --lr)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=4, help="message-passing layers of the decoder")
    ap.add_argument("--prior-layers", type=int, default=2, help="message-passing layers of the conditional prior")
    ap.add_argument("--latent", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--resume", action="store_true", help="continue from <out>.state")
    ap.add_argument("--heldout", type=int, nargs="*", default=[], help="held-out sizes (cells per side)")
    ap.add_argument("--heldout-3d", type=int, nargs="*", default=[],
                    help="held-out 3D elasticity sizes (dataset size argument: about half as many cells per side)")
    ap.add_argument("--heldout-samples", type=int, default=4, help="K for the multi-sample evaluation")
    ap.add_argument("--quiet", action="store_true")
    return ap


def with_fsai_inputs(model: GCVAE) -> GCVAE:
    """The same network with the decoder's FSAI inputs added (``GCVAEConfig.fsai_inputs``), their
    weights zero: it computes exactly what ``model`` does until training moves them."""
    if not model.config.residual:
        raise ValueError("--fsai-inputs needs a residual model (--residual)")
    config = GCVAEConfig(**{**model.config.to_dict(), "fsai_inputs": True})
    new = GCVAE(config)
    state = new.state_dict()
    for name, w in model.state_dict().items():
        target = state[name]
        if target.shape == w.shape:
            target.copy_(w)
        else:  # the decoder's first layer and the head's pattern map: one more input column, zero
            target.zero_()
            target[:, : w.shape[1]].copy_(w)
    new.load_state_dict(state)
    return new


def with_spectral_gate(model: GCVAE) -> GCVAE:
    """The same network with a problem-level gate on its correction (``GCVAEConfig.spectral_gate``),
    its weights zero: the gate is 1 and the network computes what ``model`` does until training moves it."""
    if not model.config.residual:
        raise ValueError("--spectral-gate needs a residual model (--residual)")
    new = GCVAE(GCVAEConfig(**{**model.config.to_dict(), "spectral_gate": True}))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert missing == ["spectral_gate"] and not unexpected, (missing, unexpected)
    return new


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = list(argv)  # recorded in the checkpoint and its card
    sys.argv[1:] = []  # Firedrake (held-out evaluation) hands sys.argv to PETSc: keep ours out
    train(args)


if __name__ == "__main__":
    main()
