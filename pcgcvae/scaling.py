"""Scaling run: setup time and memory per nonzero, and solve cost, from 10^4 to ~10^7 unknowns on
PETSc DMDA stencils (no Firedrake).

    python -m pcgcvae.scaling --out docs/scaling                            # 10^4 .. 10^6 dofs, 1 and 2 ranks
    python -m pcgcvae.scaling --min-dofs 1e7 --max-dofs 1e7 --ranks 1 --mem-cap-gb 16 --out docs/scaling

The operators are the constant-coefficient Laplacians of PETSc's DMDA tutorials with the Dirichlet
values eliminated: the 5-point stencil on an m x m grid (``5pt``) and the 7-point stencil on an
m x m x m grid (``7pt``), assembled in parallel on the DMDA's distribution (STAR stencil, so only the
stencil's entries are stored).  Every (stencil, size, ranks, preconditioner) runs in a fresh process
(``mpiexec`` for more than one rank), so its memory figures are its own:

* ``setup_mem_mb``: the rise of the resident set during ``KSPSetUp`` above its level before it (the
  kernel's peak counter is reset just before), summed over ranks; ``setup_bytes_per_nnz`` divides it by
  nnz(A);
* ``peak_rss_mb``: the whole process's peak (matrix, vectors, setup and solve), the largest rank's;
  ``peak_rss_total_mb`` sums the ranks';
* ``setup_s``, ``solve_s``: wall seconds (largest rank); ``setup_us_per_nnz``; CG iterations (rtol 1e-8,
  unpreconditioned residual norm, a fixed right-hand side).

Rows are written as soon as a size is done (``scaling.csv``, ``scaling.md``, ``scaling.png`` under
``--out``); rows already in ``--out``'s CSV are kept (the same case is replaced), so a long 10^7 run
can be added to a finished table.  A case whose projected peak (its own rows at smaller sizes, the part
above the interpreter's base scaled by nnz) exceeds ``--mem-cap-gb`` is not started but recorded as
refused; a running case whose processes together pass the cap is killed and recorded as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .procmem import peak_mb, reset_peak, rss_mb

STENCILS = {"5pt": 2, "7pt": 3}  # name: dimension
PCS = ["jacobi", "fsai", "gcvae", "gcvae-noguard", "gamg"]
DEFAULT_PCS = ["jacobi", "fsai", "gcvae", "gamg"]
DEFAULT_DOFS = [1e4, 1e5, 1e6, 1e7]
FIELDS = ["stencil", "grid", "dofs", "nnz", "ranks", "pc", "status", "iterations", "converged", "setup_s",
          "solve_s", "total_s", "setup_us_per_nnz", "setup_mem_mb", "setup_bytes_per_nnz", "peak_rss_mb",
          "peak_rss_total_mb", "base_rss_mb", "nnz_G", "decision"]


# -- the operator ----------------------------------------------------------------------------
def grid_size(dofs: float, dim: int) -> int:
    """The grid side m with m^dim closest to ``dofs``."""
    return max(2, round(float(dofs) ** (1.0 / dim)))


def stencil_matrix(stencil: str, m: int, comm=None, chunk: int = 1 << 16):  # noqa: ANN001, ANN201
    """The ``stencil`` Laplacian on an m^dim grid as a DMDA matrix of ``comm`` (Dirichlet values
    eliminated: diagonal 2 dim, -1 per neighbour); every rank inserts its own rows, ``chunk`` rows at
    a time, into the DMDA's preallocated matrix (so the builder's own memory stays small); returns (A, da)."""
    from petsc4py import PETSc

    dim = STENCILS[stencil]
    comm = comm or PETSc.COMM_WORLD
    da = PETSc.DMDA().create(dim=dim, sizes=(m,) * dim, dof=1, stencil_width=1,
                             stencil_type=PETSc.DMDA.StencilType.STAR, comm=comm)
    ranges = da.getRanges()  # owned [start, end) per dimension, x first
    lengths = [np.asarray(r, dtype=np.int64) for r in da.getOwnershipRanges()]  # per-dimension splits
    ends = [np.cumsum(ln) for ln in lengths]
    starts = [e - ln for e, ln in zip(ends, lengths)]
    procs = [len(ln) for ln in lengths]
    # first PETSc index of every rank's box, ranks numbered x fastest
    boxes = np.ones(procs[::-1], dtype=np.int64)
    for d in range(dim):
        shape = [1] * dim
        shape[dim - 1 - d] = procs[d]
        boxes = boxes * lengths[d].reshape(shape)
    offsets = np.concatenate([[0], np.cumsum(boxes.ravel())[:-1]])

    def petsc_index(coords: list[np.ndarray]) -> np.ndarray:
        p = [np.searchsorted(ends[d], coords[d], side="right") for d in range(dim)]
        rank = p[dim - 1]
        local = coords[dim - 1] - starts[dim - 1][p[dim - 1]]
        for d in range(dim - 2, -1, -1):
            rank = rank * procs[d] + p[d]
            local = local * lengths[d][p[d]] + (coords[d] - starts[d][p[d]])
        return offsets[rank] + local

    A = da.createMat()
    A.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
    rstart, rend = A.getOwnershipRange()
    box = [hi - lo for lo, hi in ranges]
    width = 2 * dim + 1
    for k0 in range(0, rend - rstart, chunk):
        k = np.arange(k0, min(k0 + chunk, rend - rstart), dtype=np.int64)
        coords = [ranges[d][0] + (k // int(np.prod(box[:d], dtype=np.int64))) % box[d] for d in range(dim)]
        cols = np.full((len(k), width), -1, dtype=np.int64)
        cols[:, 0] = rstart + k
        for d in range(dim):
            for step, c in ((-1, 1 + 2 * d), (1, 2 + 2 * d)):
                nb = [x if e != d else x + step for e, x in enumerate(coords)]
                inside = (nb[d] >= 0) & (nb[d] < m)
                cols[inside, c] = petsc_index([x[inside] for x in nb])
        vals = np.where(cols[:, 1:] >= 0, -1.0, 0.0)
        vals = np.column_stack([np.full(len(k), 2.0 * dim), vals])
        keep = cols >= 0
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        A.setValuesIJV(indptr.astype(PETSc.IntType), cols[keep].astype(PETSc.IntType), vals[keep],
                       rowmap=(rstart + k).astype(PETSc.IntType))
    A.assemble()
    return A, da


# -- one case, in its own process ------------------------------------------------------------
def run_case(stencil: str, m: int, pc: str) -> dict:
    """Assemble the operator, set up and solve CG with ``pc`` on every rank; the row's figures (rank 0's dict)."""
    from mpi4py import MPI
    from petsc4py import PETSc

    from .evaluate import parallel_options

    comm = PETSc.COMM_WORLD.tompi4py()
    base = rss_mb()
    A, da = stencil_matrix(stencil, m)
    nnz = int(A.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_used"])
    b = A.createVecLeft()
    lo, hi = b.getOwnershipRange()
    b.array[:] = 1.0 + 0.5 * np.sin(0.37 * np.arange(lo, hi))  # fixed per PETSc index
    x = A.createVecRight()
    opts = parallel_options(pc, comm.size)
    prefix = f"scaling_{pc.replace('-', '_')}_"
    full = {"ksp_type": "cg", "ksp_rtol": 1e-8, "ksp_atol": 0.0, "ksp_max_it": 100000,
            "ksp_norm_type": "unpreconditioned", **opts}
    for k, v in full.items():
        PETSc.Options()[prefix + k] = v
    ksp = PETSc.KSP().create(comm=A.getComm())
    ksp.setOptionsPrefix(prefix)
    ksp.setOperators(A)
    ksp.setFromOptions()
    if pc.startswith("gcvae"):  # the model's one-time load is not part of a setup's cost
        from .inference import load_inference_model
        from .models_registry import default_model_name

        load_inference_model(default_model_name(1, "krylov"))
    comm.barrier()
    before, assembly_peak = rss_mb(), peak_mb()
    reset = reset_peak()
    t0 = time.perf_counter()
    ksp.setUp()
    t1 = time.perf_counter()
    setup_peak = peak_mb() if reset else max(rss_mb(), before)
    ksp.solve(b, x)
    t2 = time.perf_counter()
    whole = max(assembly_peak, peak_mb())  # the peak counter only grows after its reset
    ctx = ksp.getPC().getPythonContext() if ksp.getPC().getType() == "python" else None
    stats = getattr(ctx, "stats", {}) if ctx is not None else {}
    guard = stats.get("guard") if isinstance(stats.get("guard"), dict) else None
    decision = "" if not pc.startswith("gcvae") else "GCVAE (guard off)" if guard is None else (
        f"{'GCVAE' if guard.get('alpha') == 1.0 else 'FSAI' if guard.get('alpha') == 0.0 else 'blend'} "
        f"({guard.get('signal', '')})")
    row = {
        "stencil": stencil, "grid": f"{m}^{STENCILS[stencil]}", "dofs": A.getSize()[0], "nnz": nnz,
        "ranks": comm.size, "pc": pc, "status": "ok",
        "iterations": ksp.getIterationNumber(), "converged": ksp.getConvergedReason() > 0,
        "setup_s": comm.allreduce(t1 - t0, op=MPI.MAX), "solve_s": comm.allreduce(t2 - t1, op=MPI.MAX),
        "setup_mem_mb": comm.allreduce(max(setup_peak - before, 0.0), op=MPI.SUM),
        "peak_rss_mb": comm.allreduce(whole, op=MPI.MAX),
        "peak_rss_total_mb": comm.allreduce(whole, op=MPI.SUM),
        "base_rss_mb": comm.allreduce(base, op=MPI.MAX),
        "nnz_G": stats.get("nnz_G", ""), "decision": decision,
    }
    ksp.destroy()
    A.destroy()
    da.destroy()
    for k in full:
        PETSc.Options().delValue(prefix + k)
    return _derived(row)


def _derived(row: dict) -> dict:
    row["total_s"] = row["setup_s"] + row["solve_s"]
    row["setup_us_per_nnz"] = 1e6 * row["setup_s"] / row["nnz"]
    row["setup_bytes_per_nnz"] = row["setup_mem_mb"] * 2**20 / row["nnz"]
    for k in ("setup_s", "solve_s", "total_s", "setup_us_per_nnz", "setup_mem_mb", "setup_bytes_per_nnz",
              "peak_rss_mb", "peak_rss_total_mb", "base_rss_mb"):
        row[k] = float(f"{float(row[k]):.5g}")
    return row


# -- the driver ------------------------------------------------------------------------------
def stencil_nnz(stencil: str, m: int) -> int:
    """nnz of the ``stencil`` Laplacian on an m^dim grid (2 dim + 1 per row, less the boundary's)."""
    dim = STENCILS[stencil]
    return m**dim + 2 * dim * (m - 1) * m ** (dim - 1)


def project_peak_mb(rows: list[dict], stencil: str, ranks: int, pc: str, nnz: int) -> float | None:
    """The projected whole-process peak (sum over ranks, MB) of a case at ``nnz`` nonzeros, from the
    largest finished case of the same stencil, rank count and preconditioner: the part above the
    interpreter's base grows like nnz.  None when there is no such case."""
    done = [r for r in rows if r["stencil"] == stencil and int(r["ranks"]) == ranks and r["pc"] == pc
            and r["status"] == "ok"]
    if not done:
        return None
    ref = max(done, key=lambda r: int(r["nnz"]))
    base = float(ref["base_rss_mb"]) * ranks
    grow = max(float(ref["peak_rss_total_mb"]) - base, 0.0)
    return base + grow * nnz / int(ref["nnz"])


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        stack += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            pass
    return total


def run_worker(stencil: str, m: int, ranks: int, pc: str, cap_mb: float, timeout_s: float, out: Path) -> dict:
    """One case in a fresh process group, watched: killed when its processes together pass ``cap_mb``."""
    part = out / f".case-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "pcgcvae.scaling", "--worker", stencil, str(m), pc, str(part)]
    if ranks > 1:
        cmd = ["mpiexec", "--oversubscribe", "-n", str(ranks), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    t0, status = time.monotonic(), None
    while proc.poll() is None:
        if _tree_rss_mb(proc.pid) > cap_mb:
            status = f"killed: its processes passed the memory cap ({cap_mb / 1024:.1f} GB)"
        elif time.monotonic() - t0 > timeout_s:
            status = f"killed: time limit ({timeout_s:.0f} s)"
        if status:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.2)
    if status is None and proc.returncode != 0:
        status = f"failed: exit status {proc.returncode}"
    if status is None:
        row = json.loads(part.read_text())
        part.unlink()
        return row
    part.unlink(missing_ok=True)
    return {"stencil": stencil, "grid": f"{m}^{STENCILS[stencil]}", "dofs": m ** STENCILS[stencil],
            "nnz": stencil_nnz(stencil, m), "ranks": ranks, "pc": pc, "status": status}


def read_rows(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def _key(r: dict) -> tuple:
    return (r["stencil"], int(r["dofs"]), int(r["ranks"]), r["pc"])


def write_outputs(rows: list[dict], out: Path, meta: dict) -> None:
    """CSV (every row), markdown and the plot; called after every case."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["stencil"], int(r["dofs"]), int(r["ranks"]),
                                       PCS.index(r["pc"]) if r["pc"] in PCS else 99))
    tmp = out / "scaling.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "scaling.csv")
    (out / "scaling.md").write_text(markdown(rows, meta))
    plot(rows, out / "scaling.png")


def _cell(r: dict, k: str, fmt: str) -> str:
    v = r.get(k, "")
    if v in ("", None):
        return "-"
    try:
        return format(float(v), fmt)
    except ValueError:
        return str(v)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Scaling run on {meta['machine']}; the rows come from (UTC start times):", "",
             *[f"- {when}: `{cmd}`" for when, cmd in meta["commands"]], "",
             "DMDA Laplacians (Dirichlet eliminated), CG rtol 1e-8; one fresh process per row; setup memory = "
             "rise of the resident set during KSPSetUp (summed over ranks); peak = the whole process "
             "(largest rank). See `python -m pcgcvae.scaling --help`.", "",
             "| stencil | grid | dofs | nnz | ranks | preconditioner | iterations | setup (s) | solve (s) | "
             "total (s) | setup µs/nnz | setup MB | setup B/nnz | peak RSS MB (max rank) | peak RSS MB (all) | "
             "decision |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['stencil']} | {r['grid']} | {r['dofs']} | {r['nnz']} | {r['ranks']} | {r['pc']} | "
                         f"{r['status']} |" + " |" * 9)
            continue
        its = str(r["iterations"]) + ("" if str(r["converged"]) == "True" else " (not conv.)")
        lines.append(
            f"| {r['stencil']} | {r['grid']} | {r['dofs']} | {r['nnz']} | {r['ranks']} | {r['pc']} | {its} | "
            f"{_cell(r, 'setup_s', '.3f')} | {_cell(r, 'solve_s', '.3f')} | {_cell(r, 'total_s', '.3f')} | "
            f"{_cell(r, 'setup_us_per_nnz', '.3f')} | {_cell(r, 'setup_mem_mb', '.1f')} | "
            f"{_cell(r, 'setup_bytes_per_nnz', '.1f')} | {_cell(r, 'peak_rss_mb', '.0f')} | "
            f"{_cell(r, 'peak_rss_total_mb', '.0f')} | {r.get('decision') or '-'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return
    stencils = list(dict.fromkeys(r["stencil"] for r in ok))
    panels = [("setup_bytes_per_nnz", "setup memory (bytes / nnz)", ("fsai", "gcvae", "gcvae-noguard")),
              ("setup_us_per_nnz", "setup time (µs / nnz)", ("fsai", "gcvae", "gcvae-noguard", "gamg")),
              ("total_s", "setup + solve (s)", tuple(PCS)), ("iterations", "CG iterations", tuple(PCS))]
    fig, axes = plt.subplots(len(stencils), len(panels), figsize=(4.2 * len(panels), 3.6 * len(stencils)),
                             squeeze=False)
    colours = dict(zip(PCS, ["#7f7f7f", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"]))
    for row_axes, st in zip(axes, stencils):
        for ax, (key, label, pcs) in zip(row_axes, panels):
            for pc in pcs:
                for ranks in sorted({int(r["ranks"]) for r in ok}):
                    pts = sorted((int(r["dofs"]), float(r[key])) for r in ok
                                 if r["stencil"] == st and r["pc"] == pc and int(r["ranks"]) == ranks)
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, marker="o", ms=3, ls="-" if ranks == 1 else "--", color=colours[pc],
                                label=f"{pc}, {ranks} rank{'s' if ranks > 1 else ''}")
            ax.set_xscale("log")
            if key != "setup_bytes_per_nnz" and key != "setup_us_per_nnz":
                ax.set_yscale("log")
            ax.set_title(f"{st}: {label}", fontsize=9)
            ax.set_xlabel("dofs")
            ax.grid(True, which="both", alpha=0.3)
        row_axes[2].legend(fontsize=6)  # the panel with every preconditioner
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pcgcvae.scaling", description=__doc__.split("\n")[0])
    ap.add_argument("--stencils", nargs="+", default=list(STENCILS), choices=list(STENCILS))
    ap.add_argument("--dofs", type=float, nargs="+", default=DEFAULT_DOFS,
                    help="target sizes (the grid side is rounded; default 1e4 1e5 1e6 1e7)")
    ap.add_argument("--min-dofs", type=float, default=0.0, help="skip smaller sizes")
    ap.add_argument("--max-dofs", type=float, default=1e6, help="skip larger sizes (default 1e6)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--pcs", nargs="+", default=DEFAULT_PCS, choices=PCS)
    ap.add_argument("--mem-cap-gb", type=float, default=16.0,
                    help="refuse a case projected above this (all its processes), kill one that passes it")
    ap.add_argument("--timeout-s", type=float, default=7200.0, help="kill a case after this long")
    ap.add_argument("--out", type=Path, default=Path("results/scaling"))
    ap.add_argument("--worker", nargs=4, metavar=("STENCIL", "M", "PC", "OUT"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.worker:
        stencil, m, pc, part = args.worker
        row = run_case(stencil, int(m), pc)
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank == 0:
            Path(part).write_text(json.dumps(row))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "scaling.csv"
    rows = read_rows(csv_path)
    cap_mb = args.mem_cap_gb * 1024
    meta_path = args.out / "scaling.meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() and rows else {"commands": []}
    meta["machine"] = f"{os.cpu_count()}-core {os.uname().machine}"
    meta["commands"].append([time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                             "python -m pcgcvae.scaling " + " ".join(argv if argv is not None else sys.argv[1:])])
    meta_path.write_text(json.dumps(meta, indent=1))
    sizes = sorted(d for d in args.dofs if args.min_dofs <= d <= args.max_dofs)
    for stencil in args.stencils:
        for dofs in sizes:
            m = grid_size(dofs, STENCILS[stencil])
            nnz = stencil_nnz(stencil, m)
            for ranks in args.ranks:
                for pc in args.pcs:
                    projected = project_peak_mb(rows, stencil, ranks, pc, nnz)
                    if projected is not None and projected > cap_mb:
                        row = {"stencil": stencil, "grid": f"{m}^{STENCILS[stencil]}", "dofs": m ** STENCILS[stencil],
                               "nnz": nnz, "ranks": ranks, "pc": pc,
                               "status": f"refused: projected peak {projected / 1024:.2f} GB > cap "
                                         f"{args.mem_cap_gb:g} GB"}
                    else:
                        row = run_worker(stencil, m, ranks, pc, cap_mb, args.timeout_s, args.out)
                    rows = [r for r in rows if _key(r) != _key(row)] + [row]
                    write_outputs(rows, args.out, meta)
                    print(f"{stencil} {row['dofs']} dofs, {ranks} rank(s), {pc}: {row['status']}"
                          + (f", {row['iterations']} its, setup {row['setup_s']} s, "
                             f"{row['setup_bytes_per_nnz']} B/nnz, peak {row['peak_rss_mb']} MB"
                             if row["status"] == "ok" else ""), flush=True)
    print(f"wrote {args.out}/scaling.csv, scaling.md, scaling.png")


if __name__ == "__main__":
    main(sys.argv[1:])
