"""Measure the preconditioner's engineering targets (figures, not tests).

    python -m pcgcvae.pctargets --sizes 100 316 1000 --out results/pctargets.json
    python -m pcgcvae.pctargets --family elasticity-3d --sizes 14 31 --pcs fsai gcvae-noguard
    mpiexec -n 2 python -m pcgcvae.pctargets --overlap-only --sizes 128
    python -m pcgcvae.pctargets --startup --repeats 7      # fresh processes: Python and C (ex2)
    python -m pcgcvae.pctargets --inference --sizes 316     # NumPy vs torch forward pass, one core
    python -m pcgcvae.pctargets --table OUT.json ...        # the stage table (markdown) of earlier runs
    python -m pcgcvae.pctargets --widths --sizes 316        # smaller networks' forward pass vs FSAI's values

* apply cost: time of one PC apply / one MatMult with A (median of blocks of 50);
* setup time per nonzero of A at each size (GCVAE and FSAI, pattern level 1; the median of the
  second to fourth setups of the process, each on a fresh KSP; the first also touches fresh memory);
* the setup's stages (ordering, scaling, pattern, graph, inference, ...; seconds, max over ranks);
* re-setup: the same KSP set up again after A's values change (scaled by 1.1, then back; the
  structure is the same, as in a Newton or time step): median of 4, its stages and what it reused;
  and set up again after A is assembled again with the same values (a Firedrake form in a time loop):
  median of 4 (``same_values_resetup_s``) and what it reused;
* the setup's own memory: the rise of the resident set during ``KSPSetUp`` above its level just
  before (the kernel's peak counter reset there; the model loaded before), first and second
  setup, rank 0; and the process's peak after setup (run one size per process for a clean figure);
* overlap: CG iterations with overlap 1 on this many ranks (compare the
  same command on 1 rank);
* start-up (``--startup``): the wall time of fresh processes that set up one PC on a
  small 5-point Laplacian (no Firedrake) -- a petsc4py script and PETSc's C tutorial ex2
  through ``-python`` -- with FSAIPC, GCVAEPC (the shipped ``.npz``, torch never imported)
  and GCVAEPC given the ``.pt`` checkpoint (read through torch, as before the NumPy run
  time); medians over ``--repeats`` runs taken in turn;
* inference (``--inference``): the forward pass alone (prior mean, level 1, natural
  order) of the shipped Poisson model, NumPy against torch in one process on one core
  (medians of 5).

The problems are the benchmark's (``pcgcvae.bench``), assembled by Firedrake: ``--family poisson-p1`` (the
default: P1, log-normal κ on the unit square; ``--sizes`` cells per side), ``poisson-p2``, ``elasticity-2d``
or ``elasticity-3d`` (with the rigid-body near-nullspace set on the operator).  ``--startup``,
``--inference`` and ``--widths`` use Poisson P1 whatever ``--family``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .bench import FAMILIES
from .procmem import peak_mb, reset_peak, rss_mb


def _median_time(fn, reps: int = 50, blocks: int = 5) -> float:  # noqa: ANN001
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - t0) / reps)
    return float(np.median(out))


def measure(size: int, pcs: list[str], overlap_only: bool, model: str | None = None,
            family: str = "poisson-p1") -> list[dict]:
    import firedrake as fd
    from petsc4py import PETSc

    from .bench import assemble_case, benchmark_spec
    from .evaluate import parallel_options, solve
    from .inference import load_inference_model
    from .models_registry import default_model_name
    from .problems import build_problem

    P, _ = assemble_case(build_problem(benchmark_spec(family, size)))
    comm = P.getComm()
    nnz = int(P.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])
    rows = []
    for name in pcs:
        opts = parallel_options(name, comm.getSize())
        if model and name.startswith("gcvae"):  # another model than the shipped default
            opts = {**opts, "pc_gcvae_model": model}
        if overlap_only:
            stem = "pc_gcvae_" if name.startswith("gcvae") else "pc_fsai_"
            r = solve(P, {**opts, stem + "overlap": 1})
            rows.append({"family": family, "size": size, "dofs": P.getSize()[0], "ranks": comm.getSize(),
                         "pc": name, "overlap": 1, "iterations": r.iterations})
            continue
        prefix = f"pct_{name}_"
        for k, v in opts.items():
            PETSc.Options()[prefix + k] = v
        if name.startswith("gcvae"):  # the model's one-time load is not part of a setup's cost
            load_inference_model(model or default_model_name(P.getBlockSize(), "krylov"))
        setups, rises = [], []
        rss0 = peak = peak_mb()
        ksp = None
        for _ in range(4):  # the first setup of a process touches fresh memory; the others: a median
            if ksp is not None:
                ksp.destroy()
            ksp = PETSc.KSP().create(comm=comm)
            ksp.setOptionsPrefix(prefix)
            ksp.setOperators(P)
            ksp.setType("cg")
            ksp.setFromOptions()
            comm.barrier()
            before, peak = rss_mb(), max(peak, peak_mb())  # the process's peak survives the resets
            reset = reset_peak()
            t0 = time.perf_counter()
            ksp.setUp()
            setups.append(time.perf_counter() - t0)
            rises.append(peak_mb() - before if reset else float("nan"))
        setup = float(np.median(setups[1:]))  # fresh KSPs: nothing reused from the setups before
        peak = max(peak, peak_mb())
        pc = ksp.getPC()
        stages = pc.getPythonContext().stats.get("times", {}) if pc.getType() == "python" else {}
        resetups = []
        for k in range(4):  # new values on the same structure (a Newton or time step): the same KSP again
            P.scale(1.1 if k % 2 == 0 else 1 / 1.1)  # (back to A's values after an even number)
            ksp.setOperators(P)
            t0 = time.perf_counter()
            ksp.setUp()
            resetups.append(time.perf_counter() - t0)
        resetup = float(np.median(resetups))
        context = pc.getPythonContext() if pc.getType() == "python" else None
        resetup_stages = context.stats.get("times", {}) if context is not None else {}
        reused = context.stats.get("reused", []) if context is not None else []
        same = []
        for _ in range(4):  # assembled again with the same values (a Firedrake form in a time loop)
            lo = P.getOwnershipRange()[0]
            P.setValue(lo, lo, P.getValue(lo, lo))
            P.assemble()
            ksp.setOperators(P)
            t0 = time.perf_counter()
            ksp.setUp()
            same.append(time.perf_counter() - t0)
        same_reused = context.stats.get("reused", []) if context is not None else []
        x, y = P.createVecs()
        x.setRandom()
        t_apply = _median_time(lambda: pc.apply(x, y))  # noqa: B023
        t_mult = _median_time(lambda: P.mult(x, y))  # noqa: B023
        r = solve(P, opts)
        rows.append({"family": family, "size": size, "dofs": P.getSize()[0], "nnz_A": nnz, "ranks": comm.getSize(),
                     "pc": name,
                     "first_setup_s": round(setups[0], 4), "setup_s": round(setup, 4),
                     "setup_us_per_nnz": round(1e6 * setup / nnz, 4), "peak_rss_before_mb": round(rss0, 1),
                     "first_setup_rise_mb": round(rises[0], 1), "setup_rise_mb": round(rises[1], 1),
                     "apply_over_matmult": round(t_apply / t_mult, 3), "peak_rss_mb": round(peak, 1),
                     "resetup_s": round(resetup, 4), "resetup_over_setup": round(resetup / setup, 3),
                     "same_values_resetup_s": round(float(np.median(same)), 5), "same_values_reused": same_reused,
                     "iterations": r.iterations, "stages_s": {k: round(v, 4) for k, v in stages.items()},
                     "resetup_stages_s": {k: round(v, 4) for k, v in resetup_stages.items()}, "reused": reused})
        ksp.destroy()
    fd.PETSc.Sys.Print(json.dumps(rows))
    return rows


STARTUP_SCRIPT = """
import sys, time
from petsc4py import PETSc
m = 50
n = m * m
A = PETSc.Mat().createAIJ(size=(n, n), nnz=5, comm=PETSc.COMM_SELF)
for r in range(n):
    i, j = divmod(r, m)
    A.setValue(r, r, 4.0)
    for q in ((i - 1) * m + j if i else -1, (i + 1) * m + j if i < m - 1 else -1,
              r - 1 if j else -1, r + 1 if j < m - 1 else -1):
        if q >= 0:
            A.setValue(r, q, -1.0)
A.assemble()
opts = PETSc.Options()
args = sys.argv[1:]
for k, v in zip(args[::2], args[1::2]):
    opts[k.lstrip("-")] = v
ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
ksp.setOperators(A)
ksp.setType("cg")
ksp.setFromOptions()
ksp.setUp()
"""


def _startup_variants() -> dict[str, list[str]]:
    from .models_registry import shipped_model_path

    python_pc = ["-pc_type", "python", "-pc_python_type"]
    return {
        "fsai": [*python_pc, "pcgcvae.FSAIPC"],
        "gcvae": [*python_pc, "pcgcvae.GCVAEPC"],
        "gcvae-torch": [*python_pc, "pcgcvae.GCVAEPC", "-pc_gcvae_model", str(shipped_model_path("poisson"))],
    }


def startup(repeats: int) -> list[dict]:
    """Median wall seconds of fresh processes (Python script, C ex2) per variant, runs interleaved."""
    import os
    import subprocess

    from .foreign import build_c_tutorial

    ex2 = build_c_tutorial("ex2")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    variants = _startup_variants()
    commands = {}
    for name, opts in variants.items():
        commands[("python", name)] = [sys.executable, "-c", STARTUP_SCRIPT, *opts]
        commands[("c", name)] = [str(ex2), "-m", "50", "-n", "50", "-ksp_type", "cg", "-python", sys.executable, *opts]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in commands}
    for _ in range(repeats + 1):  # the first round warms the file cache and is not counted
        for key, cmd in commands.items():
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:3])} ... failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
            times[key].append(wall)
    rows = []
    for (frontend, name), walls in times.items():
        med = float(np.median(walls[1:]))
        base = float(np.median(times[(frontend, "fsai")][1:]))
        rows.append({"frontend": frontend, "pc": name, "median_wall_s": round(med, 3),
                     "min_wall_s": round(min(walls[1:]), 3), "max_wall_s": round(max(walls[1:]), 3),
                     "minus_fsai_s": round(med - base, 3), "runs": repeats})
    for r in rows:
        print(json.dumps(r))
    return rows


def inference(size: int) -> list[dict]:
    """The forward pass of the shipped Poisson model at level 1, NumPy and torch, one core."""
    import firedrake as fd  # noqa: F401  (before torch: Firedrake's PETSc first)

    from .csr import scale_symmetric
    from .features import build_arrays
    from .fsai import fsai_values
    from .inference import load_inference_model
    from .pattern import factor_pattern
    from .petsc_csr import csr_to_mat, mat_to_csr
    from .problems import ProblemSpec, build_problem
    from .spectrum import spectral_feature

    spec = ProblemSpec("poisson", size, degree=1, mesh="square", seed=5,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.1})
    ahat, _ = scale_symmetric(mat_to_csr(build_problem(spec).assemble_matrix()))
    s, a2 = factor_pattern(ahat, csr_to_mat(ahat), 1, 0.02)
    rows = []
    net, _ = load_inference_model("poisson")
    base = fsai_values(ahat, s) if net.residual else None  # what a residual model corrects (not timed)
    spectral = spectral_feature(ahat, s, base) if net.spectral_gate is not None else None  # (not timed)

    def numpy_forward() -> np.ndarray:
        return net.generate(build_arrays(ahat, s, a2_on_s=a2), use_mean=True, base=base, spectral=spectral)[0]

    import torch

    from .training.checkpoint import load_model
    from .training.graph import build_graph

    torch.set_num_threads(1)
    model, _ = load_model("poisson")

    def torch_forward() -> np.ndarray:
        data = build_graph(ahat, s, a2_on_s=a2, target=base)
        if spectral is not None:
            data.spectral = torch.tensor([spectral])
        return model.generate(data, use_mean=True)[0].numpy()

    results = {}
    for name, fn in (("numpy", numpy_forward), ("torch", torch_forward)):
        walls = []
        for _ in range(6):
            t0 = time.perf_counter()
            results[name] = fn()
            walls.append(time.perf_counter() - t0)
        rows.append({"dofs": ahat.n, "nnz_S": s.nnz, "impl": name, "median_s": round(float(np.median(walls[1:])), 4),
                     "min_s": round(min(walls[1:]), 4), "max_s": round(max(walls[1:]), 4)})
    diff = float(np.abs(results["numpy"] - results["torch"]).max() / np.abs(results["torch"]).max())
    for r in rows:
        r["max_rel_diff_float32"] = diff
        print(json.dumps(r))
    return rows


WIDTHS = ((16, 3, 1), (16, 2, 1), (8, 3, 1), (8, 2, 1), (8, 2, 0))  # (hidden, decoder convs, prior convs)


def inference_widths(size: int, reps: int = 5) -> list[dict]:
    """What a smaller network would cost: the NumPy forward pass (prior mean, level 1) of the shipped Poisson
    model's architecture at the widths and depths of :data:`WIDTHS`, with random weights (the cost does not
    depend on the values), against FSAI's values on the same pattern (its plan included); medians of ``reps``."""
    import firedrake as fd  # noqa: F401  (Firedrake's PETSc first)

    from .csr import scale_symmetric
    from .features import build_arrays
    from .fsai import fsai_values
    from .inference import NumpyGCVAE, inference_weight_shapes, load_inference_model
    from .pattern import factor_pattern
    from .petsc_csr import csr_to_mat, mat_to_csr
    from .problems import ProblemSpec, build_problem

    spec = ProblemSpec("poisson", size, degree=1, mesh="square", seed=5,
                       params={"kappa": "lognormal", "sigma": 1.5, "corr": 0.1})
    ahat, _ = scale_symmetric(mat_to_csr(build_problem(spec).assemble_matrix()))
    s, a2 = factor_pattern(ahat, csr_to_mat(ahat), 1, 0.02)
    data = build_arrays(ahat, s, a2_on_s=a2)

    def median(fn) -> float:  # noqa: ANN001
        walls = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
        return round(float(np.median(walls)), 4)

    fsai_s = median(lambda: fsai_values(ahat, s))
    base = fsai_values(ahat, s)  # what a residual model corrects (its forward pass needs it; not timed)
    arch = {k: v for k, v in load_inference_model("poisson")[0].architecture.items() if k != "class"}
    rng = np.random.default_rng(0)
    rows = []
    for hidden, decoder, prior in WIDTHS:
        a = {**arch, "hidden": hidden, "decoder_layers": decoder, "prior_layers": prior}
        shapes = inference_weight_shapes({"class": "GCVAE", **a})
        net = NumpyGCVAE({k: (0.1 * rng.standard_normal(v)).astype(np.float32) for k, v in shapes.items()}, a)
        row = {"dofs": ahat.n, "hidden": hidden, "decoder_layers": decoder, "prior_layers": prior,
               "forward_s": median(lambda n=net: n.generate(data, use_mean=True, base=base, spectral=1.0)),
               "fsai_values_s": fsai_s}
        row["forward_over_fsai"] = round(row["forward_s"] / fsai_s, 2)
        print(json.dumps(row))
        rows.append(row)
    return rows


STAGE_COLUMNS = ("local block", "ordering", "scale", "symmetry check", "pattern", "graph", "spectral input",
                 "inference", "selection", "guard", "fsai", "assembly")


def _family(row: dict) -> str:
    return row.get("family", "poisson-p1")  # (rows written before --family: Poisson P1)


def profile_table(rows: list[dict]) -> str:
    """A markdown table of :func:`measure`'s rows: each setup's stages, total and per nonzero, the re-setup
    with new values (its ratio to the setup and its largest stages), the first setup's memory rise and the
    CG iterations; then the GCVAE / FSAI setup ratio per size and level (no guard: ``gcvae-noguard``)."""
    head = ["problem", "dofs", "pc", *STAGE_COLUMNS, "setup s", "µs/nnz", "re-setup s", "re-setup / setup",
            "first-setup rise MB", "iterations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        st = r.get("stages_s", {})
        nan = float("nan")
        cells = [_family(r), str(r["dofs"]), r["pc"], *[f"{st[k]:.4f}" if k in st else "–" for k in STAGE_COLUMNS],
                 f"{r['setup_s']:.4f}", f"{r['setup_us_per_nnz']:.3f}", f"{r.get('resetup_s', nan):.4f}",
                 f"{r.get('resetup_over_setup', nan):.3f}", f"{r.get('first_setup_rise_mb', nan):.1f}",
                 str(r["iterations"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    by = {(_family(r), r["dofs"], r["pc"]): r for r in rows}
    for family, dofs in sorted({(_family(r), r["dofs"]) for r in rows}):
        for fsai, gcvae in (("fsai", "gcvae-noguard"), ("fsai", "gcvae"), ("fsai2", "gcvae2"),
                            ("fsai2", "gcvae2-noguard")):
            if (family, dofs, fsai) in by and (family, dofs, gcvae) in by:
                f, g = by[family, dofs, fsai], by[family, dofs, gcvae]
                lines.append(f"- {family}, {dofs} dofs: {gcvae} / {fsai} setup {g['setup_s'] / f['setup_s']:.2f}, "
                             f"re-setup {g['resetup_s'] / f['resetup_s']:.2f}; "
                             f"iterations {g['iterations']} / {f['iterations']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.pctargets", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 316], help="cells per side")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="poisson-p1",
                    help="the benchmark's problem family (pcgcvae.bench) whose setups are measured")
    ap.add_argument("--pcs", nargs="+", default=["gcvae", "fsai"])
    ap.add_argument("--overlap-only", action="store_true")
    ap.add_argument("--startup", action="store_true", help="fresh-process start-up of each PC (Python and C)")
    ap.add_argument("--inference", action="store_true", help="the forward pass alone, NumPy and torch")
    ap.add_argument("--widths", action="store_true",
                    help="the forward pass of smaller networks (random weights) against FSAI's values")
    ap.add_argument("--repeats", type=int, default=7, help="--startup: counted runs per command")
    ap.add_argument("--model", default=None, help="the GCVAE PCs' model (-pc_gcvae_model; default: the shipped one)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print the markdown stage table of these --out files (measures nothing)")
    args = ap.parse_args(argv)
    sys.argv[1:] = []
    if args.table:
        print(profile_table([r for path in args.table for r in json.loads(path.read_text())]), end="")
        return
    if args.startup:
        rows = startup(args.repeats)
    elif args.inference:
        rows = [r for s in args.sizes for r in inference(s)]
    elif args.widths:
        rows = [r for s in args.sizes for r in inference_widths(s)]
    else:
        rows = [r for s in args.sizes for r in measure(s, args.pcs, args.overlap_only, args.model, args.family)]
    if args.out is not None:
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
