"""Held-out evaluation of a trained checkpoint on larger Firedrake problems,
and the model card that records it."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluate import parallel_options, solve
from ..ordering import recorded_ordering
from ..problems import ProblemSpec, random_spec


def heldout_spec(family: str, size: int, dim: int = 2, seed: int = 1000) -> ProblemSpec:
    """The held-out problem of ``family`` at ``size`` cells per side: P1 on the unit square (cube: 3D
    elasticity), problem seed ``seed + size`` (Poisson: log-normal κ, σ 1.5, correlation length 0.1)."""
    if family == "poisson":
        spec = random_spec("poisson", size, seed=seed + size, degree=1, mesh="square")
        spec.params.update(kappa="lognormal", sigma=1.5, corr=0.1)
        return spec
    return random_spec("elasticity", size, seed=seed + size, dim=dim, degree=1, mesh="square")


def evaluate_heldout(ckpt: Path, family: str, sizes: list[int], seed: int = 1000,
                     samples: int = 4, levels: tuple[int, ...] = (1, 2), sizes_3d: list[int] = ()) -> dict:
    """CG iterations (rtol 1e-8) of Jacobi, FSAI at pattern levels 1 and 2, the GCVAE at
    the model's ``levels``, and the Kaporin spread over ``samples`` prior samples (at the
    lowest of those levels), on one held-out problem per size (serial).

    ``sizes`` are 2D problems (cells per side); ``sizes_3d`` adds 3D elasticity problems
    (P1 cubes of about half as many cells per side, as the dataset draws them).  FSAI runs
    in the local ordering the model was trained with: the same pattern as the GCVAE.  The GCVAE rows
    are the model's own factor: the guard is off (``-pc_gcvae_guard_threshold -1``), since it would
    replace a factor it predicts to lose by FSAI's and so hide what the checkpoint does."""
    if sizes_3d and family != "elasticity":
        raise ValueError(f"3D held-out problems exist for the elasticity family only, not '{family}'")
    gcvae_rows = [name for name, level in (("gcvae", 1), ("gcvae2", 2)) if level in levels]
    import firedrake as fd

    from ..problems import build_problem
    from .checkpoint import load_model

    ordering = recorded_ordering(load_model(str(ckpt))[1]["meta"])

    rows = []
    for dim, size in [(2, s) for s in sizes] + [(3, s) for s in sizes_3d]:
        spec = heldout_spec(family, size, dim, seed)
        problem = build_problem(spec, comm=fd.COMM_SELF)
        P = problem.assemble_matrix()
        row = {"size": size, "dim": dim, "n": P.getSize()[0], "spec": spec.to_dict()}
        for name in ("jacobi", "fsai", "fsai2", *gcvae_rows):
            opts = parallel_options(name, 1)
            if name.startswith("gcvae"):
                opts.update(pc_gcvae_model=str(ckpt), pc_gcvae_guard_threshold=-1)
            if name.startswith("fsai"):
                opts["pc_fsai_ordering"] = ordering
            r = solve(P, opts)
            row[name] = r.iterations
            if name.startswith(("fsai", "gcvae")):
                row[name + "_kaporin"] = r.pc_stats.get("kaporin")
        opts = {**parallel_options(gcvae_rows[0], 1), "pc_gcvae_model": str(ckpt), "pc_gcvae_samples": samples,
                "pc_gcvae_latent": "sample", "pc_gcvae_guard_threshold": -1}
        r = solve(P, opts)
        sc = r.pc_stats.get("sample_scores", [])
        row["gcvae_best_of_k"] = r.iterations
        row["sample_scores"] = sc
        rows.append(row)
    summary = {}
    for name, fsai in (("gcvae", "fsai"), ("gcvae2", "fsai2")):
        if name in gcvae_rows:
            summary[f"{name}/jacobi"] = [round(r[name] / r["jacobi"], 3) for r in rows]
            summary[f"{name}/{fsai}"] = [round(r[name] / r[fsai], 3) for r in rows]
    return {"rows": rows, "summary": summary, "ordering": ordering}


NOTES_MARKER = "<!-- notes: kept when the card is rewritten -->"


def write_model_card(ckpt: Path, meta: dict, history: list[dict], architecture: dict | None = None) -> Path:
    """A markdown model card next to the checkpoint.

    Hand-written notes below :data:`NOTES_MARKER` in an existing card are kept."""
    tr = meta["training"]
    arch = ", ".join(f"{k} {v}" for k, v in (architecture or {}).items())
    lines = [
        f"# GCVAE model `{ckpt.stem}`",
        "",
        f"- family: **{meta['family']}**, block sizes {meta['block_sizes']}, pattern levels {meta['pattern_levels']}",
        f"- training data: {tr['samples']} Firedrake problems, {tr['size_range'][0]}-{tr['size_range'][1]} "
        f"cells per side, n = {tr['n_range'][0]}..{tr['n_range'][1]} dofs (dataset seed {tr['dataset_seed']})",
        f"- training: {tr['epochs']} epochs, {tr['minutes']} min on {tr['device']}, objective {tr['objective']}, "
        f"beta {tr['beta']}, lr {tr['lr']}, batch {tr['batch_size']}, seed {tr['seed']}",
        f"- package version {tr['package_version']}; final validation Kaporin gap to FSAI "
        f"{meta.get('validation_gap', float('nan')):.2e}",
        *([f"- architecture: {arch}"] if arch else []),
        *([f"- command: `{tr['command']}`"] if tr.get("command") else []),
        "",
    ]
    if "heldout" in meta:
        ordering = recorded_ordering(meta["heldout"])
        lines += ["## Held-out problems (CG, rtol 1e-8, serial)", "",
                  f"Local ordering `{ordering}` (`-pc_gcvae_ordering`; FSAI in the same ordering: the same pattern).",
                  "",
                  "| cells/side | n | Jacobi | FSAI L1 | GCVAE L1 | FSAI L2 | GCVAE L2 | GCVAE best of K | "
                  f"Kaporin score of K={len(meta['heldout']['rows'][0]['sample_scores'])} samples |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in meta["heldout"]["rows"]:
            sc = r["sample_scores"]
            spread = f"best {min(sc):.5f}, spread {max(sc) - min(sc):.1e}" if sc else "-"
            cells = f"{r['spec']['size']}³ (3D)" if r.get("dim") == 3 else r["size"]
            lines.append(f"| {cells} | {r['n']} | {r['jacobi']} | {r['fsai']} | {r.get('gcvae', '-')} | "
                         f"{r['fsai2']} | {r.get('gcvae2', '-')} | {r['gcvae_best_of_k']} | {spread} |")
        lines += ["", "Ratios: `" + json.dumps(meta["heldout"]["summary"]) + "`", ""]
    if history:
        lines += [f"Loss curve: `{ckpt.with_suffix('.loss.png').name}`", ""]
    card = ckpt.with_suffix(".md")
    old = card.read_text() if card.is_file() else ""
    if NOTES_MARKER in old:
        lines.append(NOTES_MARKER + old.split(NOTES_MARKER, 1)[1].rstrip("\n"))
    card.write_text("\n".join(lines) + "\n")
    return card


def record_heldout(ckpt: Path, model, meta: dict, history: list[dict], sizes: list[int],  # noqa: ANN001
                   seed: int = 1000, samples: int = 4, sizes_3d: list[int] = ()) -> Path:
    """Evaluate the saved ``ckpt`` on held-out problems of its family, store the metrics in its
    metadata (rewriting the checkpoint of ``model``) and write its model card."""
    from .checkpoint import save_checkpoint

    meta["heldout"] = evaluate_heldout(ckpt, meta["family"], sizes, seed=seed, samples=samples,
                                      levels=tuple(meta["pattern_levels"]), sizes_3d=sizes_3d)
    save_checkpoint(ckpt, model, meta)
    return write_model_card(ckpt, meta, history, {**model.config.to_dict(),
                                                  "parameters": sum(p.numel() for p in model.parameters())})


def evaluate_and_record(ckpt: Path, sizes: list[int], seed: int = 1000, samples: int = 4,
                        sizes_3d: list[int] = ()) -> Path:
    """:func:`record_heldout` for a checkpoint file (training history from ``<ckpt>.state`` if present)."""
    import torch

    from .checkpoint import load_checkpoint

    model, info = load_checkpoint(ckpt)
    state = Path(f"{ckpt}.state")
    history = torch.load(state, weights_only=False)["history"] if state.is_file() else []
    return record_heldout(ckpt, model, info["meta"], history, sizes, seed, samples, sizes_3d)


def main(argv: list[str] | None = None) -> None:
    """``python -m pcgcvae.training.heldout CKPT --sizes 48 96 192``: (re-)evaluate a checkpoint and its card."""
    import argparse

    ap = argparse.ArgumentParser(description="Held-out CG evaluation of a GCVAE checkpoint (rewrites its card).")
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--sizes", type=int, nargs="*", default=[], help="held-out 2D sizes (cells per side)")
    ap.add_argument("--sizes-3d", type=int, nargs="*", default=[],
                    help="held-out 3D elasticity sizes (dataset size argument: ~half the cells per side)")
    ap.add_argument("--seed", type=int, default=1000, help="problem seed (train.py uses its --seed + 1000)")
    ap.add_argument("--samples", type=int, default=4, help="K for the multi-sample evaluation")
    args = ap.parse_args(argv)
    if not args.sizes and not args.sizes_3d:
        ap.error("give held-out sizes: --sizes and/or --sizes-3d")
    card = evaluate_and_record(args.checkpoint, args.sizes, args.seed, args.samples, args.sizes_3d)
    print(card.read_text())


if __name__ == "__main__":
    main()
