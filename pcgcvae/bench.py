"""Benchmark: pcgcvae against PETSc's own preconditioners, same problems, same run.

    python -m pcgcvae.bench --quick                 # minutes: small sizes, 1 and 2 ranks
    python -m pcgcvae.bench                         # 10^3..10^5 dofs
    python -m pcgcvae.bench --large                 # adds ~10^6 dofs
    python -m pcgcvae.bench --large-only --families poisson-p1 --pcs jacobi gcvae ...  # just ~10^6
    python -m pcgcvae.bench --suite foreign [--quick]   # problems no model trains on (pcgcvae.foreign)

For every problem family, size, rank count and preconditioner it records CG
iterations (rtol 1e-8), setup and solve seconds (medians over ``--repeats``
solves, each with a fresh KSP), their sum, the preconditioner's nonzeros and
the memory its setup took, and writes ``bench.csv``, ``bench.md``,
``summary.md`` (the headline ratios against Jacobi, FSAI and GAMG) and PNG
plots (iterations and total time against dofs) into ``--out``.  Runs on more
than one rank re-launch this module under ``mpiexec``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .procmem import peak_mb, rss_mb

FAMILIES = {
    # name: (family, dim, degree, sizes quick, sizes default, sizes large)
    "poisson-p1": ("poisson", 2, 1, [16, 32], [31, 100, 316], [1000]),
    "poisson-p2": ("poisson", 2, 2, [8, 16], [16, 50, 158], [500]),
    "elasticity-2d": ("elasticity", 2, 1, [12, 24], [22, 70, 223], [707]),
    "elasticity-3d": ("elasticity", 3, 1, [4, 6], [6, 14, 31], [68]),
}
UNGUARDED = ["gcvae-noguard", "gcvae2-noguard"]  # the model's own factor (-pc_gcvae_guard_threshold -1)
PCS = ["none", "jacobi", "sor", "icc", "fsai", "fsai2", "gcvae", "gcvae2", "gcvae-k4", "fsai-ov1", "gcvae-ov1",
       "gamg", "gamg-fsai-smoother", "gamg-gcvae-smoother"]
FIELDS = ["family", "dofs", "ranks", "pc", "iterations", "converged", "setup_s", "solve_s", "total_s", "nnz",
          "setup_mem_mb", "peak_rss_mb", "guard_estimate", "guard_signal", "guard_start", "guard_alpha",
          "guard_predicted", "guard_cost_s"]
GUARD_FIELDS = FIELDS[-6:]


def benchmark_spec(name: str, size: int):  # noqa: ANN201
    """The :class:`pcgcvae.problems.ProblemSpec` of benchmark family ``name`` (a key of :data:`FAMILIES`) at
    ``size`` cells per side: log-normal κ (Poisson) or Young's modulus (elasticity, ν = 0.35), seed 5."""
    from .problems import ProblemSpec

    if name not in FAMILIES:
        raise ValueError(f"unknown benchmark family '{name}' (choose from {', '.join(FAMILIES)})")
    family, dim, degree = FAMILIES[name][:3]
    params = ({"kappa": "lognormal", "sigma": 1.5, "corr": 0.1} if family == "poisson"
              else {"E_sigma": 1.0, "corr": 0.3, "nu": 0.35})
    return ProblemSpec(family, size, degree=degree, dim=dim, mesh="square", seed=5, params=params)


def assemble_case(problem):  # noqa: ANN001, ANN201
    """The operator (with the near-nullspace, if any) and a fixed random right-hand side."""
    P = problem.assemble_matrix()
    comm = P.getComm()
    b = P.createVecLeft()
    rng = np.random.default_rng(0)
    lo, hi = b.getOwnershipRange()
    b.array[:] = rng.standard_normal(b.getSize())[lo:hi]
    if problem.near_nullspace is not None:
        P.setNearNullSpace(problem.near_nullspace.nullspace(comm=comm))
    return P, b


def run_case(P, b, pc: str, repeats: int) -> dict:  # noqa: ANN001
    """Median setup/solve time over ``repeats`` fresh KSPs on the assembled operator ``P``."""
    from mpi4py import MPI
    from petsc4py import PETSc

    from .evaluate import parallel_options, preconditioner_nnz

    comm = P.getComm()
    opts = PETSc.Options()
    prefix = f"bench_{pc.replace('-', '_')}_"
    pc_opts = parallel_options(pc, comm.getSize())
    full = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_atol": 0.0, "ksp_max_it": 20000,
            "ksp_norm_type": "unpreconditioned", **pc_opts}
    for k, v in full.items():
        opts[prefix + k] = v
    setups, solves, mems, peaks = [], [], [], []
    its, converged, nnz, guard = 0, False, None, None
    try:
        for _ in range(repeats):
            ksp = PETSc.KSP().create(comm=comm)
            ksp.setOptionsPrefix(prefix)
            ksp.setOperators(P)
            ksp.setFromOptions()
            x = P.createVecRight()
            comm.barrier()
            m0 = rss_mb()
            t0 = time.perf_counter()
            ksp.setUp()
            t1 = time.perf_counter()
            m1, peak = rss_mb(), peak_mb()
            ksp.solve(b, x)
            t2 = time.perf_counter()
            setups.append(comm.tompi4py().allreduce(t1 - t0, op=MPI.MAX))
            solves.append(comm.tompi4py().allreduce(t2 - t1, op=MPI.MAX))
            mems.append(comm.tompi4py().allreduce(max(m1 - m0, 0.0), op=MPI.SUM))
            peaks.append(comm.tompi4py().allreduce(peak, op=MPI.MAX))
            its, converged = ksp.getIterationNumber(), ksp.getConvergedReason() > 0
            nnz = preconditioner_nnz(ksp, pc_opts, P)
            guard = _guard_stats(ksp) if guard is None else guard  # the first (uncached) setup's guard
            ksp.destroy()
    finally:
        for k in full:
            opts.delValue(prefix + k)
    setup, solve = float(np.median(setups)), float(np.median(solves))
    return {"iterations": its, "converged": converged, "setup_s": round(setup, 5), "solve_s": round(solve, 5),
            "total_s": round(setup + solve, 5), "nnz": nnz, "setup_mem_mb": round(float(np.median(mems)), 2),
            "peak_rss_mb": round(max(peaks), 1), **(guard or {})}


def _guard_stats(ksp) -> dict:  # noqa: ANN001
    """The GCVAE guard's signals, decision and cost as bench columns ({} for other preconditioners)."""
    from .foreign import guard_columns

    pc = ksp.getPC()
    ctx = pc.getPythonContext() if pc.getType() == "python" else None
    guard = getattr(ctx, "stats", {}).get("guard") if ctx is not None else None
    if not isinstance(guard, dict):
        return {}
    return {k: v for k, v in guard_columns(guard).items() if k in GUARD_FIELDS}


def load_models(families: list[str], pcs: list[str]) -> float:
    """Load the shipped models (exported weights, no torch) the GCVAE rows will use; returns the seconds.

    Done once per process before any timing, so every GCVAE setup is timed the same way
    (this one-time cost is reported separately).
    """
    if not any("gcvae" in pc for pc in pcs):
        return 0.0
    t0 = time.perf_counter()
    from .inference import load_inference_model
    from .models_registry import default_model_name

    roles = ["krylov"] + (["smoother"] if "gamg-gcvae-smoother" in pcs else [])
    # block size: 1 for Poisson, the dimension for elasticity
    block_sizes = {1 if FAMILIES[f][0] == "poisson" else FAMILIES[f][1] for f in families}
    for name in sorted({default_model_name(bs, role) for bs in block_sizes for role in roles}):
        load_inference_model(name)
    return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> tuple[list[dict], float]:
    """Run every case on this communicator (all ranks); the rows and the one-time model load seconds."""
    import firedrake as fd
    from mpi4py import MPI
    from tqdm import tqdm

    from .problems import build_problem

    comm = fd.COMM_WORLD
    load_s = comm.allreduce(load_models(args.families, args.pcs), op=MPI.MAX)
    rows = []
    cases = []
    for fam in args.families:
        quick, default, large = FAMILIES[fam][3:]
        sizes = quick if args.quick else large if args.large_only else default + (large if args.large else [])
        cases += [(fam, s) for s in sizes]
    bar = tqdm(total=len(cases) * len(args.pcs), desc=f"bench ({comm.size} rank(s))", disable=comm.rank != 0)
    for fam, size in cases:
        problem = build_problem(benchmark_spec(fam, size))
        P, b = assemble_case(problem)  # once per problem, shared by every preconditioner
        for pc in args.pcs:
            bar.set_postfix_str(f"{fam} n={problem.V.dim()} {pc}")
            res = run_case(P, b, pc, args.repeats)
            rows.append({"family": fam, "dofs": problem.V.dim(), "ranks": comm.size, "pc": pc, **res})
            bar.update()
    bar.close()
    return rows, load_s


def write_outputs(rows: list[dict], out: Path, meta: dict) -> None:
    """CSV, markdown table and PNG plots."""
    import matplotlib

    matplotlib.use("Agg")

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"Benchmark: {meta['when']} on {meta['machine']}; CG rtol 1e-8; times are medians of "
             f"{meta['repeats']} solves (max over ranks). Before timing, each run loaded the exported "
             f"models once (no torch; {meta['model_load_s']}; a user's first GCVAE setup in a process pays it).", ""]
    lines += ["| family | dofs | ranks | preconditioner | iterations | setup (s) | solve (s) | total (s) | nnz | "
              "setup mem (MB) | peak RSS (MB) | guard |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        its = str(r["iterations"]) if r["converged"] else f"{r['iterations']} (not conv.)"
        lines.append(f"| {r['family']} | {r['dofs']} | {r['ranks']} | {r['pc']} | {its} | {r['setup_s']:.4f} | "
                     f"{r['solve_s']:.4f} | {r['total_s']:.4f} | {r['nnz'] if r['nnz'] is not None else '-'} | "
                     f"{r['setup_mem_mb']} | {r['peak_rss_mb']} | {_guard_cell(r)} |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    (out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "summary.md").write_text(summarise(rows))
    for key, fname, label in (("iterations", "iterations.png", "CG iterations"),
                              ("total_s", "time.png", "setup + solve (s)")):
        _plot(rows, key, label, out / fname)


_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#000000", "#b8860b", "#00008b", "#ff1493"]


def _style(pc: str) -> dict:
    """One colour and marker per preconditioner, the same in every panel and plot."""
    k = PCS.index(pc) if pc in PCS else len(PCS)
    return {"color": _COLOURS[k % len(_COLOURS)], "marker": "osD^v<>phX*8Pd"[k % 14]}


def _plot(rows: list[dict], key: str, label: str, png: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fams = list(dict.fromkeys(r["family"] for r in rows))
    pcs = list(dict.fromkeys(r["pc"] for r in rows))
    rank_counts = sorted({r["ranks"] for r in rows})
    fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams) + 2, 4.2), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        for pc in pcs:
            for ranks in rank_counts:
                pts = [(r["dofs"], r[key]) for r in rows
                       if r["family"] == fam and r["pc"] == pc and r["ranks"] == ranks and r["converged"]]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    ax.loglog(xs, ys, ls="-" if ranks == 1 else "--", ms=4, lw=1.2, **_style(pc))
        ax.set_title(fam)
        ax.set_xlabel("dofs")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], ms=4, lw=1.2, label=pc, **_style(pc)) for pc in pcs]
    handles += [Line2D([], [], color="grey", ls="-" if r == 1 else "--", label=f"{r} rank{'s' if r > 1 else ''}")
                for r in rank_counts]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2 / (4.5 * len(fams) + 2), 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _guard_cell(r: dict) -> str:
    """The guard's decision in a table cell: what built the factor, why, and what it cost."""
    from .foreign import signal_text

    if r.get("guard_alpha") in (None, ""):
        return "-"
    alpha = float(r["guard_alpha"])
    what = "GCVAE" if alpha == 1.0 else "FSAI" if alpha == 0.0 else f"blend α={alpha:g}"
    pred = r.get("guard_predicted")
    parts = [] if r.get("guard_estimate") in (None, "") else [f"gap {float(r['guard_estimate']):+.4f}"]
    parts += [] if pred in (None, "") else [f"predicted {float(pred):.3f}"]
    parts.append(signal_text(r))
    return f"{what} ({', '.join(parts)}; {float(r['guard_cost_s']):.3f} s)"


def guard_summary(rows: list[dict]) -> list[str]:
    """How often the guard fired and what it cost, relative to the GCVAE's setup + solve."""
    out = []
    for pc in dict.fromkeys(r["pc"] for r in rows if r.get("guard_alpha") not in (None, "")):
        gr = [r for r in rows if r["pc"] == pc and r.get("guard_alpha") not in (None, "")]
        fired = [r for r in gr if float(r["guard_alpha"]) != 1.0]
        share = [float(r["guard_cost_s"]) / float(r["total_s"]) for r in gr if float(r["total_s"]) > 0]
        where = ", ".join(f"{r['family']} {r['dofs']}" for r in fired) or "none"
        out.append(f"- guard ({pc}): fired on {len(fired)}/{len(gr)} setups ({where}); its cost is "
                   f"{100 * float(np.median(share)):.1f} % (median; max {100 * max(share):.1f} %) of the "
                   "GCVAE's setup + solve")
    return out


def _ratio(rows: list[dict], fam: str, dofs: int, ranks: int, num: str, den: str, key: str) -> float | None:
    pick = {r["pc"]: r for r in rows if r["family"] == fam and r["dofs"] == dofs and r["ranks"] == ranks}
    a, b = pick.get(num), pick.get(den)
    if a is None or b is None or not (a["converged"] and b["converged"]) or not b[key]:
        return None
    return a[key] / b[key]


def summarise(rows: list[dict]) -> str:
    """Markdown table of the headline ratios the issue targets name, per family, size and ranks."""
    cols = [("gcvae", "jacobi", "iterations", "GCVAE/Jacobi its"), ("gcvae", "fsai", "iterations", "GCVAE/FSAI its"),
            ("gcvae2", "jacobi", "iterations", "GCVAE2/Jacobi its"), ("gcvae2", "fsai2", "iterations",
                                                                       "GCVAE2/FSAI2 its"),
            ("gcvae", "jacobi", "total_s", "GCVAE/Jacobi total time"), ("fsai", "jacobi", "total_s",
                                                                        "FSAI/Jacobi total time"),
            ("gcvae", "jacobi", "solve_s", "GCVAE/Jacobi solve time"),
            ("gcvae", "fsai", "total_s", "GCVAE/FSAI total time"),
            ("gcvae-noguard", "fsai", "iterations", "GCVAE/FSAI its, guard off"),
            ("gcvae2-noguard", "fsai2", "iterations", "GCVAE2/FSAI2 its, guard off"),
            ("gamg-gcvae-smoother", "gamg", "iterations", "GAMG+GCVAE smoother/GAMG its")]
    lines = ["| family | dofs | ranks | " + " | ".join(c[3] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    cases = list(dict.fromkeys((r["family"], r["dofs"], r["ranks"]) for r in rows))
    for fam, dofs, ranks in cases:
        vals = [_ratio(rows, fam, dofs, ranks, num, den, key) for num, den, key, _ in cols]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {fam} | {dofs} | {ranks} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join([*lines, "", *guard_summary(rows)]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=["default", "foreign"], default="default",
                    help="default: the training families at growing sizes; foreign: problems no model trains on "
                         "(python -m pcgcvae.bench --suite foreign --help)")
    ap.add_argument("--quick", action="store_true", help="small sizes only (minutes)")
    ap.add_argument("--large", action="store_true", help="add the ~10^6-dof sizes")
    ap.add_argument("--large-only", action="store_true", help="only the ~10^6-dof sizes")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--pcs", nargs="+", default=PCS, choices=PCS + UNGUARDED,
                    help="default: all but the unguarded GCVAE rows (the guard's effect: add them)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    suite = argparse.ArgumentParser(add_help=False)
    suite.add_argument("--suite", choices=["default", "foreign"], default="default")
    if suite.parse_known_args(argv)[0].suite == "foreign":
        from .foreign import main as foreign_main

        foreign_main(argv)
        return
    args = build_parser().parse_args(argv)
    sys.argv[1:] = []  # Firedrake hands sys.argv to PETSc as options
    if args.worker_out is not None:
        rows, load_s = worker(args)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            args.worker_out.write_text(json.dumps({"rows": rows, "model_load_s": load_s}))
        return
    rows: list[dict] = []
    load: dict[int, float] = {}
    base = [a for a in (argv if argv is not None else []) if a]
    for ranks in args.ranks:
        part = args.out / f".rows-{ranks}.json"
        args.out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pcgcvae.bench", *base, "--worker-out", str(part)]
        if ranks > 1:
            cmd = ["mpiexec", "--oversubscribe", "-n", str(ranks), *cmd]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, env=env)
        result = json.loads(part.read_text())
        rows += result["rows"]
        load[ranks] = result["model_load_s"]
        part.unlink()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{os.cpu_count()}-core {os.uname().machine} ({os.uname().nodename})",
            "repeats": args.repeats, "argv": base,
            "model_load_s": ", ".join(f"{v:.1f} s on {k} rank{'s' if k > 1 else ''}" for k, v in load.items())}
    write_outputs(rows, args.out, meta)
    print(f"wrote {args.out}/bench.csv, bench.md, summary.md, iterations.png, time.png ({len(rows)} rows)")


if __name__ == "__main__":
    main(sys.argv[1:])
