"""The scaling command (issue 22): its DMDA stencils are the textbook Laplacians, it writes a row per
case as soon as the case is done, keeps earlier rows, refuses a case projected above the memory cap
and kills one that passes it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from pcgcvae.scaling import FIELDS, STENCILS, grid_size, project_peak_mb, stencil_matrix, stencil_nnz

ROOT = Path(__file__).parent.parent


def laplacian(dim: int, m: int) -> sp.csr_matrix:
    t = sp.diags([-np.ones(m - 1), 2 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1])
    eye = sp.identity(m)
    out = sp.csr_matrix((m**dim, m**dim))
    for d in range(dim):
        factors = [t if e == d else eye for e in range(dim)][::-1]  # x fastest
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f)
        out = out + term
    return sp.csr_matrix(out)


@pytest.mark.parametrize("stencil", list(STENCILS))
def test_stencil_matrix_is_the_laplacian(stencil: str) -> None:
    from petsc4py import PETSc

    m = 5
    A, da = stencil_matrix(stencil, m, comm=PETSc.COMM_SELF)
    indptr, indices, data = A.getValuesCSR()
    got = sp.csr_matrix((data, indices, indptr), shape=A.getSize())
    want = laplacian(STENCILS[stencil], m)
    assert abs(got - want).max() == 0
    assert got.nnz == want.nnz == stencil_nnz(stencil, m)  # STAR stencil: no stored zeros
    assert grid_size(1e6, 2) == 1000 and grid_size(1e6, 3) == 100 and grid_size(1e7, 2) == 3162
    A.destroy()
    da.destroy()


def test_projection_scales_the_part_above_the_base() -> None:
    rows = [{"stencil": "5pt", "ranks": "1", "pc": "fsai", "status": "ok", "nnz": "1000", "base_rss_mb": "100",
             "peak_rss_total_mb": "150"},
            {"stencil": "5pt", "ranks": "1", "pc": "fsai", "status": "ok", "nnz": "10000", "base_rss_mb": "100",
             "peak_rss_total_mb": "300"},
            {"stencil": "5pt", "ranks": "1", "pc": "fsai", "status": "killed", "nnz": "100000"}]
    assert project_peak_mb(rows, "5pt", 1, "fsai", 100000) == pytest.approx(100 + 200 * 10)
    assert project_peak_mb(rows, "5pt", 2, "fsai", 100000) is None
    assert project_peak_mb(rows, "7pt", 1, "fsai", 100000) is None


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "pcgcvae.scaling", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _rows(out: Path) -> list[dict]:
    with open(out / "scaling.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_scaling_command_writes_rows_refuses_and_kills(tmp_path) -> None:
    out = tmp_path / "scaling"
    pcs = ["jacobi", "fsai", "gcvae", "gcvae-noguard", "gamg"]
    _run(["--stencils", "5pt", "7pt", "--dofs", "900", "--ranks", "1", "2", "--pcs", *pcs, "--out", str(out)],
         tmp_path)
    rows = _rows(out)
    assert len(rows) == 2 * 2 * len(pcs) and list(rows[0]) == FIELDS
    for r in rows:
        assert r["status"] == "ok" and r["converged"] == "True", r
        assert int(r["nnz"]) == stencil_nnz(r["stencil"], round(int(r["dofs"]) ** (1 / STENCILS[r["stencil"]])))
        assert float(r["setup_mem_mb"]) >= 0 and float(r["peak_rss_mb"]) > float(r["base_rss_mb"]) > 0, r
        assert float(r["setup_s"]) > 0 and float(r["solve_s"]) > 0, r
        assert (r["decision"] != "") == r["pc"].startswith("gcvae"), r
    its = {(r["stencil"], r["ranks"], r["pc"]): int(r["iterations"]) for r in rows}
    for (st, ranks, pc), n in its.items():
        if pc in ("fsai", "gcvae", "gcvae-noguard"):
            assert n < its[(st, ranks, "jacobi")], (st, ranks, pc, its)
        if pc == "gcvae":  # the guard: never worse than FSAI on the same pattern
            assert n <= its[(st, ranks, "fsai")] * 1.02 + 1, (st, ranks, its)
    assert any(r["decision"] == "GCVAE (guard off)" for r in rows)
    md = (out / "scaling.md").read_text()
    assert md.count("\n| 5pt |") == md.count("\n| 7pt |") == 2 * len(pcs)
    assert (out / "scaling.png").stat().st_size > 5000

    # a larger size whose projected peak (from the rows above) passes a 50 MB cap is refused; earlier rows stay
    _run(["--stencils", "5pt", "--dofs", "900", "10000", "--min-dofs", "1000", "--ranks", "1", "--pcs", "fsai",
          "--mem-cap-gb", "0.05", "--out", str(out)], tmp_path)
    rows2 = _rows(out)
    assert len(rows2) == len(rows) + 1
    refused = [r for r in rows2 if int(r["dofs"]) == 10000]
    assert len(refused) == 1 and refused[0]["status"].startswith("refused: projected peak"), refused
    md = (out / "scaling.md").read_text()
    assert "refused" in md and md.count(": `python -m pcgcvae.scaling --stencils") == 2  # both commands named

    # with nothing to project from, a case that passes the cap while running is killed and recorded
    fresh = tmp_path / "fresh"
    _run(["--stencils", "5pt", "--dofs", "900", "--ranks", "1", "--pcs", "fsai", "--mem-cap-gb", "0.02",
          "--out", str(fresh)], tmp_path)
    (killed,) = _rows(fresh)
    assert killed["status"].startswith("killed: its processes passed the memory cap"), killed
