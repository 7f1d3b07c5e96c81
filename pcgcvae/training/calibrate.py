"""Calibrate a model's guard threshold on its own training distribution.

    python -m pcgcvae.training.calibrate pcgcvae/models/poisson.pt [--count 48] [--write]

Draws ``--count`` problems of the model's training family from the training
generator (:func:`pcgcvae.problems.random_spec`, default, broad or stencils in turn as the
model's datasets were, the datasets' size range and two larger held-out sizes) with
seeds that no training set uses, and measures
on each, at every pattern level the model supports, the exact Kaporin gap of
the generated factor to FSAI on the same pattern (the guard's estimate with
every row sampled) and both CG iteration counts (rtol 1e-8, random right-hand
side, serial).  The threshold of a level is then

    t = 1.25 × (largest gap where the GCVAE needed at most FSAI's iterations),
    lowered below the smallest gap where it needed more and the spectral check
    below does not predict the loss (so that the guard fires on every
    in-distribution loss), and 0 (always FSAI) when it won nowhere.

On the same runs it records the guard's spectral prediction of that ratio (the model's factor against
FSAI after :data:`pcgcvae.guard.DEFAULT_STEPS` CG steps each from the exact solution of ``--start``: random,
smoothed by :data:`pcgcvae.guard.DEFAULT_SMOOTH` Jacobi sweeps, or from the problem's near-nullspace (set on
the matrix as it is solved) or its translations, :mod:`pcgcvae.trial`; the other starts are measured too, each
getting its own ratio threshold, ``guard_ratio_by_start``), and the ratio threshold of a level is

    R = min(1, 0.999 × smallest prediction where the GCVAE needed more than FSAI's iterations),
    and 0 (the model's factor is never kept: no short CG, no inference) when it won nowhere.

R lies below every losing prediction, so the spectral check catches every calibration loss and the Kaporin
threshold is left to what it does cheaply (before FSAI is built): firing on factors far from FSAI.  (Until
2026-12-03 t was lowered below every losing gap; at level 2, where wins and losses have the same gaps,
that made the guard build FSAI on nearly every 2D problem, wins of 4-6 % included.)  With
``-pc_gcvae_guard_steps 0`` the losses the gap does not catch are kept.

``--stored`` applies the rules to the measurements a checkpoint already stores (no solves).
``--write`` stores ``guard_threshold`` and ``guard_ratio`` (per level), ``guard_start`` and
``guard_ratio_by_start``, and the measurements
(``guard_calibration``) in the checkpoint's metadata; export the ``.npz`` again afterwards
(``python -m pcgcvae.training.export``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..guard import DEFAULT_SMOOTH, DEFAULT_START, DEFAULT_STEPS
from ..trial import MODES_IN_WORDS, STARTS

MARGIN = 1.25
SEED_BASE = 70_000  # calibration problem seeds: SEED_BASE + k (checked against the training seeds)
HELDOUT_SIZES = {"poisson": [48, 96], "elasticity": [32, 48]}


def training_seeds(dataset_seed: int, count: int, size_min: int, size_max: int) -> set[int]:
    """The problem seeds :func:`pcgcvae.training.dataset.generate` draws for these arguments."""
    rng = np.random.default_rng(dataset_seed)
    seeds = set()
    for _ in range(count):
        rng.integers(size_min, size_max + 1)  # the size draw, as the generator makes it
        seeds.add(int(rng.integers(2**31)))
    return seeds


def threshold_from(points: list[tuple[float, float, float]], ratio_threshold: float | None = None) -> float:
    """The rule of the module docstring from (gap, GCVAE/FSAI iteration ratio, short-CG prediction)
    triples: the losses whose prediction is above ``ratio_threshold`` are left to the short CG (None:
    no spectral check, every loss lowers the threshold)."""
    wins = [g for g, r, _ in points if r <= 1.0]
    losses = [g for g, r, p in points if r > 1.0 and (ratio_threshold is None or p <= ratio_threshold)]
    if not wins:
        return 0.0
    t = MARGIN * max(wins)
    if losses:
        t = min(t, 0.999 * min(losses))
    return max(t, 0.0)


def ratio_from(points: list[tuple[float, float]]) -> float:
    """The ratio-threshold rule of the module docstring from (prediction, true ratio) pairs."""
    wins = [p for p, r in points if r <= 1.0]
    losses = [p for p, r in points if r > 1.0]
    if not wins:
        return 0.0
    return min(1.0, 0.999 * min(losses)) if losses else 1.0


GENERATORS = ("default", "broad", "stencils", "mass")  # pcgcvae.problems.random_spec's draws


def generator_of(dataset: dict) -> str:
    """Which of :data:`GENERATORS` a recorded training dataset was drawn from."""
    for kind in ("stencils", "mass", "broad"):
        if dataset.get(kind):
            return kind
    return "default"


def calibrate(ckpt: Path, count: int = 48, sizes: list[int] | None = None,
              size_range: tuple[int, int] | None = None, generators: list[str] | None = None,
              start: str = DEFAULT_START) -> dict:
    """Measure the (gap, ratio) pairs and the thresholds of ``ckpt``; see the module docstring.

    ``size_range`` (cells per side) replaces the datasets' size range for the draws: the same
    generator and families at the sizes users solve (the training sizes need ~30 CG iterations,
    too few for the short-CG prediction and for iteration ratios finer than a few percent).
    ``generators`` (each one of :data:`GENERATORS`) replaces the kinds of the model's datasets that the
    problems are drawn like in turn: problem k is drawn like ``generators[k % len(generators)]``, so a
    model trained on another list of datasets can be calibrated on the same problems as another model."""
    import firedrake as fd

    from ..evaluate import parallel_options, solve
    from ..ordering import recorded_ordering
    from ..problems import build_problem, random_spec
    from .checkpoint import load_checkpoint

    _, info = load_checkpoint(ckpt)
    meta = info["meta"]
    family = meta["family"]
    tr = meta.get("training", {})
    lo, hi = tr.get("size_range", [8, 28])
    datasets = tr.get("datasets") or [{"seed": tr.get("dataset_seed", 0), "count": tr.get("samples", 200),
                                       "size_range": [lo, hi], "broad": False}]
    used = set().union(*(training_seeds(int(d["seed"]), int(d["count"]), *d["size_range"]) for d in datasets))
    # problem k: drawn like generator k mod len(kinds) (default: like the model's datasets, in order)
    kinds = generators or [generator_of(d) for d in datasets]
    unknown = sorted(set(kinds) - set(GENERATORS))
    if unknown or not kinds:
        raise ValueError(f"calibration generators must be among {', '.join(GENERATORS)}, got {kinds}")
    ordering = recorded_ordering(meta)
    rng = np.random.default_rng(SEED_BASE)
    draw_lo, draw_hi = size_range or (lo, hi)
    draws = [int(rng.integers(draw_lo, draw_hi + 1)) for _ in range(count - 2)] + (sizes or HELDOUT_SIZES[family])
    rows = []
    for k, size in enumerate(draws):
        seed = SEED_BASE + k
        if seed in used:
            raise RuntimeError(f"calibration seed {seed} is a training seed; change SEED_BASE")
        drawn_like = {g: kinds[k % len(kinds)] == g for g in ("broad", "stencils", "mass")}
        spec = random_spec(family, size, seed=seed, **drawn_like)
        problem = build_problem(spec, comm=fd.COMM_SELF)
        P = problem.assemble_matrix()
        if getattr(problem, "near_nullspace", None) is not None:  # as it is solved (Firedrake's near_nullspace)
            P.setNearNullSpace(problem.near_nullspace.nullspace(comm=P.getComm()))
        row = {"seed": seed, "size": size, "n": P.getSize()[0], "degree": spec.degree, "dim": spec.dim,
               "mesh": spec.mesh, **drawn_like}
        for level in meta["pattern_levels"]:
            fsai = solve(P, {**parallel_options("fsai", 1), "pc_fsai_pattern_level": level,
                             "pc_fsai_ordering": ordering})
            gcvae = solve(P, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(ckpt),
                              "pc_gcvae_pattern_level": level, "pc_gcvae_guard_threshold": 1e9,
                              "pc_gcvae_guard_fraction": 1.0, "pc_gcvae_guard_steps": 0})  # the model's factor
            gap = gcvae.pc_stats["guard"]["estimate"]
            preds = {}  # the prediction from every start the guard can take (its fallbacks included)
            # the asked start first, then every other (each gets its own threshold: -pc_gcvae_guard_start);
            # without a near-nullspace that start is the random one's run, made once
            asks = [k if P.getNearNullSpace() or k != "near-nullspace" else "random"
                    for k in [start] + [k for k in STARTS if k != start]]
            for asked in dict.fromkeys(asks):
                probe = solve(P, {**parallel_options("gcvae", 1), "pc_gcvae_model": str(ckpt),
                                  "pc_gcvae_pattern_level": level, "pc_gcvae_guard_threshold": 1e9,
                                  "pc_gcvae_guard_ratio": 1.0,  # the spectral check always runs here,
                                  "pc_gcvae_guard_start": asked,
                                  "pc_gcvae_guard_full_rows": 0,  # the short CG runs even on small problems
                                  "pc_gcvae_guard_full_iterations": 0})  # and short solves
                guard = probe.pc_stats["guard"]
                preds.setdefault(guard["start"], round(guard["trials"][1.0]["ratio"], 4))
            first = next(iter(preds))  # the start the guard takes on this problem as it is solved
            row[f"L{level}"] = {"fsai": fsai.iterations, "gcvae": gcvae.iterations, "gap": round(gap, 6),
                                "ratio": round(gcvae.iterations / fsai.iterations, 4), "pred": preds[first],
                                "preds": preds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {**thresholds_of(rows, meta["pattern_levels"]), "rows": rows,
            "steps": DEFAULT_STEPS, "smooth": DEFAULT_SMOOTH, "start": start,
            "size_range": [int(draw_lo), int(draw_hi)],
            "heldout_sizes": draws[-2:], "generators": kinds,
            "seeds": f"{SEED_BASE}..{SEED_BASE + len(draws) - 1} (disjoint from training)"}


def thresholds_of(rows: list[dict], levels: list[int]) -> dict:
    """Both thresholds of every level from the measured rows, the ratio threshold of every start measured
    on every problem (``preds``), and the rules' descriptions."""
    thresholds, ratios, by_start = {}, {}, {}
    for level in levels:
        cells = [r[f"L{level}"] for r in rows]
        ratios[str(level)] = round(ratio_from([(c["pred"], c["ratio"]) for c in cells]), 6)
        thresholds[str(level)] = round(threshold_from([(c["gap"], c["ratio"], c["pred"]) for c in cells],
                                                      ratios[str(level)]), 6)
        for kind in set.intersection(*(set(c.get("preds", {})) for c in cells)):
            by_start.setdefault(kind, {})[str(level)] = round(
                ratio_from([(c["preds"][kind], c["ratio"]) for c in cells]), 6)
    return {"thresholds": thresholds, "ratios": ratios, "ratios_by_start": by_start,
            "rule": f"{MARGIN} x largest winning gap, below the smallest losing gap the short CG does not catch; "
                    "0 if no win",
            "ratio_rule": "min(1, 0.999 x smallest losing prediction); 0 if no win"}


def write(ckpt: Path, result: dict) -> None:
    """Store the thresholds and measurements in the checkpoint's metadata."""
    from .checkpoint import load_checkpoint, save_checkpoint

    model, info = load_checkpoint(ckpt)
    meta = dict(info["meta"])
    meta["guard_threshold"] = result["thresholds"]
    meta["guard_ratio"] = result["ratios"]
    meta["guard_start"] = result.get("start", "random")
    meta["guard_ratio_by_start"] = result.get("ratios_by_start", {})
    meta["guard_calibration"] = result
    save_checkpoint(ckpt, model, meta)


def kept_wins(rows: list[dict], level: str, start: str, ratio: float) -> str:
    """How many of the calibration's wins (all, and those of >= 3 %) the short runs from ``start`` keep at
    the ratio threshold ``ratio``, as "k / n (>= 3 %: k / n)"."""
    cells = [r[f"L{level}"] for r in rows]
    wins = [c for c in cells if c["ratio"] < 1.0]
    big = [c for c in wins if c["ratio"] <= 0.97]

    def kept(cs: list[dict]) -> int:
        return sum(c["preds"][start] <= ratio for c in cs)

    return f"{kept(wins)} / {len(wins)} (>= 3 %: {kept(big)} / {len(big)})"


def summary(result: dict) -> str:
    """A markdown table of the calibration."""
    levels = sorted(k for k in result["rows"][0] if k.startswith("L"))
    head = "| seed | n | mesh | degree | dim | " + " | ".join(
        f"{lv} FSAI | {lv} GCVAE | {lv} ratio | {lv} gap | {lv} predicted" for lv in levels) + " |"
    lines = [head, "|" + "---|" * (5 + 5 * len(levels))]
    for r in result["rows"]:
        cells = [str(r["seed"]), str(r["n"]), r["mesh"], str(r["degree"]), str(r["dim"])]
        for lv in levels:
            c = r[lv]
            cells += [str(c["fsai"]), str(c["gcvae"]), f"{c['ratio']:.3f}", f"{c['gap']:+.4f}", f"{c['pred']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Thresholds: " + ", ".join(f"level {k}: {v:.4f}" for k, v in result["thresholds"].items())
                 + f" ({result['rule']}; seeds {result['seeds']}; sizes {result.get('size_range')} cells per side "
                 f"and {result.get('heldout_sizes')}"
                 + (f"; drawn like {', '.join(result['generators'])} in turn" if result.get("generators") else "")
                 + ")")
    asked = result.get("start", "random")
    source = (f"the problems' {MODES_IN_WORDS[asked]}" + (" (random without them)" if asked == "near-nullspace" else "")
              if asked in MODES_IN_WORDS else f"x* smoothed by {result.get('smooth', 0)} Jacobi sweeps")
    lines.append("Ratio thresholds: " + ", ".join(f"level {k}: {v:.4f}" for k, v in result["ratios"].items())
                 + f" ({result['ratio_rule']}; {result['steps']} CG steps per factor from " + source
                 + f", `-pc_gcvae_guard_start {asked}`)")
    for kind, per_level in result.get("ratios_by_start", {}).items():
        lines.append(f"Ratio thresholds from the {kind} start: "
                     + ", ".join(f"level {k}: {v:.4f}" for k, v in per_level.items())
                     + "; the model's wins the short runs keep at them: "
                     + ", ".join(f"level {k}: {kept_wins(result['rows'], k, kind, v)}" for k, v in per_level.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.training.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--count", type=int, default=48,
                    help="problems (the last two at held-out sizes; 48 since 2026-12-06, 24 before)")
    ap.add_argument("--write", action="store_true", help="store the thresholds in the checkpoint")
    ap.add_argument("--report", type=Path, help="write the markdown table here")
    ap.add_argument("--size-range", type=int, nargs=2, metavar=("LO", "HI"),
                    help="cells per side of the drawn problems (default: the training datasets' range)")
    ap.add_argument("--generators", nargs="+", choices=GENERATORS, metavar="KIND",
                    help="draw the problems like these generators in turn (default: like the model's training "
                    f"datasets, in their order; choices: {', '.join(GENERATORS)})")
    ap.add_argument("--start", choices=STARTS, default=DEFAULT_START,
                    help="the short CG runs' exact solution (-pc_gcvae_guard_start), stored with the thresholds: "
                    "the model's guard runs from it by default")
    ap.add_argument("--stored", action="store_true",
                    help="no solves: apply the rules to the measurements the checkpoint already stores")
    args = ap.parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc
    if args.stored:
        from .checkpoint import load_checkpoint

        meta = load_checkpoint(args.checkpoint)[1]["meta"]
        if "guard_calibration" not in meta:
            ap.error(f"{args.checkpoint} stores no calibration measurements; run without --stored")
        result = {**meta["guard_calibration"], **thresholds_of(meta["guard_calibration"]["rows"],
                                                               meta["pattern_levels"])}
    else:
        result = calibrate(args.checkpoint, args.count,
                           size_range=tuple(args.size_range) if args.size_range else None,
                           generators=args.generators, start=args.start)
    text = summary(result)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if args.write:
        write(args.checkpoint, result)


if __name__ == "__main__":
    main()
