"""The Firedrake demos run to convergence in quick mode (serial and 2 ranks)
with the shipped models, and the benchmark's quick mode writes well-formed files."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
DEMOS = ROOT / "firedrake_demos"
MPIEXEC = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "-n", "2"]


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("demo", [["poisson.py"], ["elasticity.py", "-dim", "2"], ["elasticity.py", "-dim", "3"]])
def test_demo_quick(demo: list[str], ranks: int, tmp_path) -> None:
    png = tmp_path / "history.png"
    cmd = [sys.executable, str(DEMOS / demo[0]), *demo[1:], "-quick", "-plot", str(png)]
    out = run(MPIEXEC + cmd if ranks > 1 else cmd, cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "preconditioner" not in line]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[:3] == ["GCVAE", "FSAI", "Jacobi"] and len(names) == 6, out
    assert names[4].startswith("GAMG") and names[5] == names[4] + " + GCVAE smoother", out
    assert "not converged" not in out, out
    its = {r.split("|")[1].strip(): int(r.split("|")[2]) for r in rows}
    assert its["GCVAE"] < its["Jacobi"], out
    assert its[names[5]] <= 1.2 * its[names[4]], out  # the GCVAE smoother keeps GAMG's iteration count
    assert png.is_file() and png.stat().st_size > 1000


def test_bench_quick_writes_files(tmp_path) -> None:
    out = tmp_path / "results"
    run([sys.executable, "-m", "pcgcvae.bench", "--quick", "--families", "poisson-p1", "--pcs", "jacobi", "fsai",
         "gcvae", "gcvae-ov1", "gamg", "gamg-gcvae-smoother", "--ranks", "1", "2", "--repeats", "1",
         "--out", str(out)], cwd=tmp_path)
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 6 * 2  # sizes x preconditioners x rank counts
    from pcgcvae.bench import FIELDS

    assert list(rows[0]) == FIELDS
    assert {r["ranks"] for r in rows} == {"1", "2"}
    assert all(r["converged"] == "True" for r in rows)
    assert all(float(r["setup_s"]) >= 0 and float(r["solve_s"]) > 0 for r in rows)
    md = (out / "bench.md").read_text()
    assert md.count("\n| poisson-p1 |") == len(rows)
    for png in ("iterations.png", "time.png"):
        assert (out / png).stat().st_size > 1000
    # the headline ratios: one line per (size, ranks), GCVAE beats Jacobi, GAMG's smoother column filled
    text = (out / "summary.md").read_text()
    header = [c.strip() for c in text.splitlines()[0].split("|")[1:-1]]
    summary = [line.split("|")[1:-1] for line in text.splitlines()[2:] if line.startswith("|")]
    assert len(summary) == 2 * 2
    for cells in summary:
        assert cells[0].strip() == "poisson-p1"
        assert 0 < float(cells[header.index("GCVAE/Jacobi its")]) < 1.0
        assert float(cells[header.index("GAMG+GCVAE smoother/GAMG its")]) <= 1.2
    # the guard's signals, decision and cost on every GCVAE row (not on the others), and its firing rate
    for r in rows:
        has_guard = r["pc"] in ("gcvae", "gcvae-ov1")
        assert (r["guard_alpha"] != "") == has_guard, r
        if has_guard:
            assert float(r["guard_alpha"]) in (0.0, 1.0) and float(r["guard_cost_s"]) > 0, r
            assert np.isfinite(float(r["guard_estimate"])), r
            assert r["guard_signal"] in ("Kaporin gap", "short CG", "whole CG solves"), r
    assert "- guard (gcvae): fired on " in text and "of the GCVAE's setup + solve" in text
    by_case = {(r["dofs"], r["ranks"], r["pc"]): int(r["iterations"]) for r in rows}
    for (dofs, ranks, pc), its in by_case.items():
        if pc == "gcvae-ov1" and ranks == "1":
            assert its == by_case[(dofs, ranks, "gcvae")]  # overlap changes nothing on one rank


def test_pctargets_measures_setup_resetup_and_memory(tmp_path) -> None:
    """`python -m pcgcvae.pctargets` writes, per preconditioner, the setup's stages, its own memory rise and
    a re-setup with new values that reuses the structure (and costs less than a first setup's work)."""
    import json

    out = tmp_path / "targets.json"
    run([sys.executable, "-m", "pcgcvae.pctargets", "--sizes", "24", "--pcs", "fsai", "gcvae", "--out", str(out)],
        cwd=tmp_path)
    rows = {r["pc"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fsai", "gcvae"}
    for r in rows.values():
        assert r["setup_s"] > 0 and r["resetup_s"] > 0 and r["first_setup_rise_mb"] >= 0, r
        assert {"ordering", "pattern", "G's structure"} <= set(r["reused"]), r
        assert "inference" in r["stages_s"] or r["pc"] == "fsai", r
        assert r["same_values_reused"] == ["the factor itself (same operator values and options)"], r
        assert r["same_values_resetup_s"] > 0, r
    assert "FSAI plan" in rows["fsai"]["reused"] and "fsai" in rows["fsai"]["resetup_stages_s"]
    table = run([sys.executable, "-m", "pcgcvae.pctargets", "--table", str(out)], cwd=tmp_path)
    assert table.count("\n| ") == len(rows), table
    assert "- poisson-p1, " in table and " dofs: gcvae / fsai setup " in table, table


def test_pctargets_measures_another_benchmark_family(tmp_path) -> None:
    """`pctargets --family elasticity-3d`: the benchmark's 3D elasticity problem (block size 3, the vector model),
    each row naming its family, and the table's ratio lines per family; an unknown family is refused."""
    import json

    out = tmp_path / "targets.json"
    run([sys.executable, "-m", "pcgcvae.pctargets", "--family", "elasticity-3d", "--sizes", "3", "--pcs", "fsai",
         "gcvae-noguard", "--out", str(out)], cwd=tmp_path)
    rows = {r["pc"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fsai", "gcvae-noguard"}
    for r in rows.values():
        assert r["family"] == "elasticity-3d" and r["dofs"] == 3 * 4**3 and r["iterations"] > 0, r
    assert "inference" in rows["gcvae-noguard"]["stages_s"] and "inference" not in rows["fsai"]["stages_s"]
    table = run([sys.executable, "-m", "pcgcvae.pctargets", "--table", str(out)], cwd=tmp_path)
    assert "| elasticity-3d | 192 | gcvae-noguard |" in table and "- elasticity-3d, 192 dofs: gcvae-noguard / fsai" \
        in table, table
    bad = subprocess.run([sys.executable, "-m", "pcgcvae.pctargets", "--family", "stokes", "--out", str(out)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'stokes'" in bad.stderr, bad.stderr


def test_pctargets_widths_times_smaller_networks(tmp_path) -> None:
    """`pctargets --widths`: one row per architecture of WIDTHS, each forward pass timed against FSAI's values."""
    import json

    from pcgcvae.pctargets import WIDTHS

    out = tmp_path / "widths.json"
    run([sys.executable, "-m", "pcgcvae.pctargets", "--widths", "--sizes", "16", "--out", str(out)], cwd=tmp_path)
    rows = json.loads(out.read_text())
    assert [(r["hidden"], r["decoder_layers"], r["prior_layers"]) for r in rows] == list(WIDTHS)
    assert all(r["forward_s"] > 0 and r["fsai_values_s"] > 0 and r["forward_over_fsai"] > 0 for r in rows), rows
