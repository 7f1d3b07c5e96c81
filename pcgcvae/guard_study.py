"""Which guard signal predicts a GCVAE loss: the measurements behind the guard's defaults.

    python -m pcgcvae.guard_study --out docs/guard [--quick] [--steps 10 20 40] [--smooth 20]

On every foreign-suite problem (:mod:`pcgcvae.foreign`, which no model trains on)
and on held-out problems of the shipped models' own training families (seeds
no training set uses), at pattern levels 1 and 2, it records

* the true GCVAE / FSAI iteration ratio without the guard (CG 1e-8, the suite's
  random right-hand side),
* the guard's signals: the sampled Kaporin gap, and for each number of CG steps
  the short-CG prediction of that ratio (:mod:`pcgcvae.trial`) for the model's
  factor (α = 1) and the half blend (α = 0.5),
* the iterations and the guard's cost with the default guard (yes/no: FSAI or
  the model's factor) and with the blend search (``-pc_gcvae_guard_alphas 0.5,1``),

and writes ``guard-study.csv`` and ``guard-study.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .foreign import PC_OPTIONS, Built, _random_rhs, all_cases, run_pc
from .guard import DEFAULT_SMOOTH
from .pc_options import NO_GUARD

STEPS = [10, 20, 40]
HELDOUT = [  # (family, size, seed): training families at held-out sizes; seeds 71000+ are no training seed
    ("poisson", 96, 71_000), ("poisson", 128, 71_001), ("poisson", 160, 71_002),
    ("elasticity", 48, 71_010), ("elasticity", 64, 71_011),
]


def fields(steps: list[int]) -> list[str]:
    """The CSV columns for these step counts."""
    return ["problem", "level", "dofs", "fsai", "noguard", "ratio", "gap", *[f"pred{s}" for s in steps],
            *[f"pred{s}_half" for s in steps], *[f"cond{s}" for s in steps], "guarded", "guarded_ratio",
            "guarded_alpha", "guarded_cost_s", "blend", "blend_ratio", "blend_alpha", "blend_cost_s",
            "setup_noguard_s", "solve_noguard_s"]


def heldout_built(family: str, size: int, seed: int) -> Built:
    """A problem of a shipped model's training family at a size it never saw."""
    import firedrake as fd

    from .problems import build_problem, random_spec

    spec = random_spec(family, size, seed=seed)
    return Built(op=build_problem(spec, comm=fd.COMM_SELF).assemble_matrix())


def study_problem(name: str, built: Built, levels: list[int], steps: list[int], log=print,  # noqa: ANN001
                  smooth: int = DEFAULT_SMOOTH) -> list[dict]:
    """One problem's rows (one per pattern level); the short CG runs start from x* smoothed by ``smooth``
    damped-Jacobi sweeps (``-pc_gcvae_guard_smooth``), the guarded runs too."""
    b = _random_rhs(built, name)
    rows = []
    for level in levels:
        fsai_opts = {**PC_OPTIONS["fsai"], "pc_fsai_pattern_level": level}
        gc = {**PC_OPTIONS["gcvae"], "pc_gcvae_pattern_level": level}
        fsai = run_pc(built, name, "fsai", b, fsai_opts)
        bare = run_pc(built, name, "gcvae-noguard", b, {**gc, **NO_GUARD})
        row: dict[str, Any] = {"problem": name, "level": level, "dofs": built.op.getSize()[0],
                               "fsai": fsai["iterations"], "noguard": bare["iterations"],
                               "ratio": round(bare["iterations"] / max(fsai["iterations"], 1), 4),
                               "setup_noguard_s": bare.get("setup_s"), "solve_noguard_s": bare.get("solve_s")}
        for s in steps:  # the Kaporin gap never decides here: the short-CG prediction of both candidates
            # ratio 1: the trials run whatever the model's calibration (a calibrated 0 would skip them)
            probe = run_pc(built, name, "gcvae", b, {**gc, "pc_gcvae_guard_threshold": 1e9, "pc_gcvae_guard_ratio": 1.0,
                                                      "pc_gcvae_guard_steps": s, "pc_gcvae_guard_alphas": "0.5,1",
                                                      "pc_gcvae_guard_smooth": smooth, "pc_gcvae_guard_full_rows": 0,
                                                      "pc_gcvae_guard_full_iterations": 0})
            row["gap"] = probe.get("guard_estimate")
            trials = probe.get("guard_trials", {})
            row[f"pred{s}"] = round(trials["1"]["ratio"], 4) if "1" in trials else None
            row[f"pred{s}_half"] = round(trials["0.5"]["ratio"], 4) if "0.5" in trials else None
            # sqrt of the Lanczos condition-estimate ratio: the other spectral prediction of the iteration ratio
            row[f"cond{s}"] = (round(float(np.sqrt(trials["1"]["condition"] / trials["0"]["condition"])), 4)
                               if "1" in trials and "0" in trials else None)
        for key, extra in (("guarded", {}), ("blend", {"pc_gcvae_guard_alphas": "0.5,1"})):
            r = run_pc(built, name, "gcvae", b, {**gc, **extra, "pc_gcvae_guard_smooth": smooth})
            row[key] = r["iterations"]
            row[f"{key}_ratio"] = round(r["iterations"] / max(fsai["iterations"], 1), 4)
            row[f"{key}_alpha"] = r.get("guard_alpha")  # guarded_alpha, blend_alpha
            row[f"{key}_cost_s"] = r.get("guard_cost_s")
        log(json.dumps(row))
        rows.append(row)
    return rows


def write(rows: list[dict], out: Path, meta: dict, steps: list[int]) -> None:
    """``guard-study.csv`` and ``guard-study.md`` (table and summary) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "guard-study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields(steps), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    head = ["problem", "L", "dofs", "FSAI", "GCVAE", "ratio", "gap"] + [f"pred {s}" for s in steps] + \
        [f"pred {s} α=½" for s in steps] + [f"√κ ratio {s}" for s in steps] + \
        ["guarded", "ratio", "α", "cost s", "blend", "ratio", "α", "cost s", "GCVAE setup+solve s"]
    keys = ["problem", "level", "dofs", "fsai", "noguard", "ratio", "gap"] + [f"pred{s}" for s in steps] + \
        [f"pred{s}_half" for s in steps] + [f"cond{s}" for s in steps] + \
        ["guarded", "guarded_ratio", "guarded_alpha", "guarded_cost_s", "blend", "blend_ratio", "blend_alpha",
         "blend_cost_s"]
    lines = [f"# Guard study\n\n{meta['when']} on {meta['machine']}, `{meta['command']}` ({meta['seconds']:.0f} s). "
             "ratio: GCVAE / FSAI CG iterations without the guard (rtol 1e-8, random rhs); gap: sampled Kaporin gap; "
             "pred k: the short-CG prediction of that ratio after k steps per factor (α = ½: the half blend's), "
             f"from an exact solution smoothed by {meta.get('smooth', 0)} damped-Jacobi sweeps; "
             "√κ ratio k: the square root of the ratio of the two Lanczos condition estimates of the same runs; "
             "guarded / blend: iterations with the default guard (FSAI or the model's factor) and with the "
             "blend search (`-pc_gcvae_guard_alphas 0.5,1`), their ratio to FSAI, the α chosen and the guard's "
             "cost (s, first setup).\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        total = (r.get("setup_noguard_s") or 0) + (r.get("solve_noguard_s") or 0)
        cells.append(f"{total:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *summary(rows), "", *rule_table(rows, steps)]
    (out / "guard-study.md").write_text("\n".join(lines) + "\n")


def summary(rows: list[dict]) -> list[str]:
    """Worst and median ratios without the guard, with it and with the blend search; firing rate and cost."""
    out = []
    for level in sorted({r["level"] for r in rows}):
        rs = [r for r in rows if r["level"] == level]
        for what, key in (("no guard", "ratio"), ("guard", "guarded_ratio"), ("blend search", "blend_ratio")):
            v = np.array([r[key] for r in rs if r.get(key) is not None])
            if len(v):
                out.append(f"- level {level}, {what}: GCVAE/FSAI median {np.median(v):.3f}, worst {v.max():.3f}, "
                           f"≤ 1.02 on {int(np.sum(v <= 1.02))}/{len(v)}")
        fired = [r["problem"] for r in rs if r.get("guarded_alpha") not in (None, 1.0)]
        costs = [r["guarded_cost_s"] for r in rs if r.get("guarded_cost_s") is not None]
        out.append(f"- level {level}: the guard fired on {len(fired)}/{len(rs)} problems; its cost median "
                   f"{np.median(costs) if costs else float('nan'):.3f} s")
    return out


def rule_table(rows: list[dict], steps: list[int], threshold: float = 0.06) -> list[str]:
    """What each yes/no rule would give on these rows: the Kaporin gap fires above ``threshold``
    (the package default), else the model's factor is kept when the predictor's ratio is <= R."""
    out = ["## Decision rules compared on these rows", "",
           f"Kaporin gap > {threshold} fires first; then keep the model's factor when the predicted ratio <= R. "
           "Resulting GCVAE/FSAI iteration ratio (1 where the guard chose FSAI); 'lost wins': rows where the "
           "model alone needs >= 3 % fewer iterations than FSAI and the rule gives them up.", "",
           "| steps | predictor | R | median | worst | > 1.02 | kept | lost wins |",
           "|---|---|---|---|---|---|---|---|"]
    for k in steps:
        for predictor in ("energy", "condition", "mean"):
            for limit in (0.98, 1.0, 1.02):
                got, lost = [], []
                for r in rows:
                    e, c = r.get(f"pred{k}"), r.get(f"cond{k}")
                    if e is None or c is None:
                        continue
                    pred = e if predictor == "energy" else c if predictor == "condition" else 0.5 * (e + c)
                    keep = r["gap"] <= threshold and pred <= limit
                    got.append(r["ratio"] if keep else 1.0)
                    if r["ratio"] <= 0.97 and not keep:
                        lost.append(f"{r['problem']} L{r['level']}")
                if not got:
                    continue
                v = np.array(got)
                out.append(f"| {k} | {predictor} | {limit:g} | {np.median(v):.3f} | {v.max():.3f} | "
                           f"{int(np.sum(v > 1.02))} | {int(np.sum(v != 1.0))} | {', '.join(lost) or '–'} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.guard_study", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/guard"))
    ap.add_argument("--quick", action="store_true", help="the quick suite at its small sizes, no held-out problems")
    ap.add_argument("--steps", type=int, nargs="+", default=STEPS)
    ap.add_argument("--problems", nargs="*", help="only these problem names")
    ap.add_argument("--smooth", type=int, default=DEFAULT_SMOOTH,
                    help="damped-Jacobi sweeps on the short CG runs' exact solution (-pc_gcvae_guard_smooth)")
    args = ap.parse_args(argv)
    import platform

    t0 = time.time()
    rows: list[dict] = []
    for case in all_cases():
        if (args.quick and not case.quick) or (args.problems and case.name not in args.problems):
            continue
        rows += study_problem(case.name, case.build(args.quick), [1, 2], args.steps, smooth=args.smooth)
    if not args.quick:
        for family, size, seed in HELDOUT:
            name = f"heldout-{family}-{size}-s{seed}"
            if args.problems and name not in args.problems:
                continue
            rows += study_problem(name, heldout_built(family, size, seed), [1, 2], args.steps, smooth=args.smooth)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} ({platform.node()})",
            "command": "python -m pcgcvae.guard_study " + " ".join(argv if argv is not None else []),
            "seconds": time.time() - t0, "smooth": args.smooth}
    write(rows, args.out, meta, args.steps)


if __name__ == "__main__":
    main()
