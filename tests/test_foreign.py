"""The foreign-problem suite (``python -m pcgcvae.bench --suite foreign``): its quick mode runs every
preconditioner to convergence and writes well-formed files, and no suite problem's matrix is one the
training generator produces for the shipped models' datasets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
FULL_RUN = ROOT / "docs" / "bench-foreign" / "foreign.json"

# The datasets the shipped models were trained on: (family, count, size_min, size_max, seed, dim, broad),
# the `python -m pcgcvae.training.dataset` commands of their cards (broad: `--broad`).
# test_training_datasets_match_the_shipped_models fails when a retrained model records other data:
# then list its dataset commands here.
# (family, count, smallest size, largest size, dataset seed, dim, broad, stencils, mass): the arguments of
# python -m pcgcvae.training.dataset for every dataset a shipped model was trained on
TRAINING_DATASETS = [
    ("poisson", 160, 8, 28, 0, None, False, False, False),
    ("poisson", 160, 8, 28, 1, None, True, False, False),
    ("poisson", 80, 8, 28, 2, None, False, True, False),
    ("poisson", 80, 8, 28, 3, None, False, False, True),
    ("poisson", 48, 32, 64, 4, None, True, False, False),
    ("elasticity", 120, 4, 14, 0, None, False, False, False),
    ("elasticity", 120, 4, 14, 1, None, True, False, False),
    ("elasticity", 32, 16, 28, 5, None, True, False, False),  # larger graphs (elasticity, 2026-12-06)
]


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("foreign")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pcgcvae.bench", "--suite", "foreign", "--quick", "--out", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def test_quick_suite_writes_wellformed_files(quick_suite: Path) -> None:
    from pcgcvae.foreign import FIELDS, PCS, SAME_PATTERN, all_cases

    cases = all_cases()
    assert len(cases) >= 15 and {c.kind for c in cases} == {"firedrake", "fieldsplit", "dmda", "c-tutorial"}
    quick = [c for c in cases if c.quick]
    assert {c.kind for c in quick} == {"firedrake", "fieldsplit", "dmda", "c-tutorial"}

    with open(quick_suite / "foreign.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == FIELDS
        rows = list(reader)
    assert [(r["problem"], r["pc"]) for r in rows] == [(c.name, pc) for c in quick for pc in PCS]
    kind = {c.name: c.kind for c in cases}
    for r in rows:
        where = f"{r['problem']}/{r['pc']}"
        assert r["error"] == "", where + ": " + r["error"]
        assert r["converged"] == "True" and int(r["iterations"]) > 0, where
        assert int(r["dofs"]) > 0 and int(r["nnz"]) >= int(r["dofs"]) // 2, where
        assert 0 <= float(r["setup_s"]) <= float(r["total_s"]), where
        if r["iterations_own"]:
            assert r["converged_own"] == "True" and int(r["iterations_own"]) > 0, where
        if kind[r["problem"]] == "c-tutorial":  # the C program itself ran with this preconditioner
            assert int(r["iterations_c"]) > 0, where
        else:
            assert r["iterations_c"] == "", where
        if r["pc"].startswith(("fsai", "gcvae")):
            assert np.isfinite(float(r["kaporin"])), where
        if r["guard_fired"] and r["guard_signal"] == "ratio threshold 0":  # decided before the network ran
            assert r["guard_fired"] == "True" and float(r["guard_alpha"]) == 0.0, where
            assert int(r["guard_rows"]) == 0 and r["guard_estimate"] == "", where
        elif r["guard_fired"]:  # the guard columns, where the PC reports them
            assert r["guard_fired"] in ("True", "False") and int(r["guard_rows"]) > 0, where
            assert np.isfinite(float(r["guard_estimate"])), where
            assert float(r["guard_alpha"]) in (0.0, 1.0) and float(r["guard_cost_s"]) >= 0, where
            assert r["guard_signal"] in ("Kaporin gap", "short CG", "whole CG solves"), where
            assert (r["guard_fired"] == "True") == (float(r["guard_alpha"]) == 0.0), where
            if r["guard_signal"] in ("short CG", "whole CG solves"):  # the model's factor's iteration ratio
                assert float(r["guard_predicted"]) > 0, where
    by = {(r["problem"], r["pc"]): r for r in rows}
    for c in quick:
        assert by[(c.name, "icc")]["iterations_own"] != "" or c.kind == "dmda"  # every non-FD problem has its own rhs
        for g, f in SAME_PATTERN.items():
            gap = float(by[(c.name, g)]["kaporin_gap"])
            assert gap == pytest.approx(float(by[(c.name, g)]["kaporin"]) - float(by[(c.name, f)]["kaporin"]),
                                        abs=2e-6)
        # same preconditioner, same matrix: the C program and the in-process solve of its dumped system agree
        if c.kind == "c-tutorial":
            for pc in ("jacobi", "fsai", "gcvae"):
                r = by[(c.name, pc)]
                assert abs(int(r["iterations_c"]) - int(r["iterations_own"])) <= 2, (c.name, pc)

    md = (quick_suite / "foreign.md").read_text()
    for c in quick:
        assert f"\n### {c.name}\n" in md and f"\n| {c.name} | " in md
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for level in (1, 2):
        assert f"random right-hand side, level {level}: GCVAE ≤ 1.00× FSAI (with the guard) on **" in summary
        assert f"/{len(quick)}**" in summary
    assert "guard (gcvae)" in summary

    data = json.loads((quick_suite / "foreign.json").read_text())
    assert [p["problem"] for p in data["problems"]] == [c.name for c in quick]
    assert data["meta"]["quick"] is True


def training_fingerprints(tmp_path: Path, monkeypatch) -> dict[int, list[dict]]:
    """Fingerprints of every matrix the training generator (pcgcvae.training.dataset.generate) produces for
    TRAINING_DATASETS, by size.  The generator runs unchanged -- same seeds, same specs, the same
    Firedrake assembly -- except that each sample's preparation (ordering, patterns, FSAI targets,
    which do not change the matrix) is replaced by taking the fingerprint of the assembled matrix."""
    from pcgcvae.foreign import fingerprint
    from pcgcvae.training import dataset

    seen: dict[int, list[dict]] = {}

    def fake_prepare(a, block_size, *args, **kwargs) -> dict:
        fp = fingerprint(a)
        seen.setdefault(fp["n"], []).append(fp)
        return {"indptr": a.indptr, **{f"s{lv}_score": np.array(0.0) for lv in dataset.LEVELS}}

    monkeypatch.setattr(dataset, "prepare_sample", fake_prepare)
    for family, count, lo, hi, seed, dim, broad, stencils, mass in TRAINING_DATASETS:
        index = dataset.generate(family, count, lo, hi, seed=seed,
                                 out=tmp_path / f"{family}-{seed}-{broad}-{stencils}-{mass}", progress=False, dim=dim,
                                 broad=broad, stencils=stencils, mass=mass)
        assert len(index) == count
    assert sum(len(v) for v in seen.values()) == sum(d[1] for d in TRAINING_DATASETS)
    return seen


def test_training_datasets_match_the_shipped_models() -> None:
    """TRAINING_DATASETS are the data the shipped models record (samples, size range, seeds): every
    dataset a model was trained on is listed, and every listed dataset is some shipped model's."""
    from pcgcvae.training.checkpoint import SHIPPED_MODELS, load_model

    used = set()
    for name in SHIPPED_MODELS:
        meta = load_model(name)[1]["meta"]
        tr, fam = meta["training"], meta["family"]
        if tr.get("datasets"):  # recorded per dataset since the broad retraining
            mine = {(fam, d["count"], *d["size_range"], d["seed"], d["dim"], d["broad"], d.get("stencils", False),
                     d.get("mass", False))
                    for d in tr["datasets"]}
        else:  # one default dataset
            seed = tr["dataset_seed"][0] if isinstance(tr["dataset_seed"], list) else tr["dataset_seed"]
            mine = {(fam, tr["samples"], *tr["size_range"], seed, None, False, False, False)}
        assert mine <= set(TRAINING_DATASETS), (name, mine)
        assert tr["samples"] == sum(d[1] for d in mine), name
        assert tr["size_range"] == [min(d[2] for d in mine), max(d[3] for d in mine)], name
        used |= mine
    assert used == set(TRAINING_DATASETS)


def test_no_suite_matrix_is_a_training_matrix(quick_suite: Path, tmp_path, monkeypatch) -> None:
    """Compare sizes, then the exact and the renumbering-invariant hashes, of every suite operator (the
    quick run's and the committed full run's, docs/bench-foreign) with every training matrix."""
    from pcgcvae.foreign import all_cases, fingerprint

    training = training_fingerprints(tmp_path, monkeypatch)
    quick = json.loads((quick_suite / "foreign.json").read_text())["problems"]
    full = json.loads(FULL_RUN.read_text())["problems"]
    assert {p["problem"] for p in full} == {c.name for c in all_cases()}, "docs/bench-foreign is not the full suite"
    for p in quick + full:
        fp = p["fingerprint"]
        assert fp["n"] == p.get("velocity_dofs", p["dofs"]) and fp["nnz"] == p["nnz"], p["problem"]
        for t in training.get(fp["n"], []):  # same size: compare structure and values
            assert t["exact"] != fp["exact"], f"{p['problem']} is a training matrix"
            assert t["perm"] != fp["perm"], f"{p['problem']} is a renumbered training matrix"
    # Since the larger-graph dataset (seed 4, 2026-12-06) the training matrices reach 35937 rows and suite and
    # training sizes overlap (the suite's are 12961-27000), so sizes alone no longer separate them: the exact and
    # renumbering-invariant comparisons above are the check, and they ran on real same-size pairs (16641 rows:
    # q2-jumps and p2-reaction against training matrices of that size), not only on the constructed one below.
    assert any(p["fingerprint"]["n"] in training for p in full)

    # the comparison can fail: a training matrix, also renumbered, is found
    import firedrake as fd
    from petsc4py import PETSc

    from pcgcvae.petsc_csr import mat_to_csr
    from pcgcvae.problems import build_problem, random_spec

    rng = np.random.default_rng(TRAINING_DATASETS[0][4])  # the generator's first draw
    size = int(rng.integers(TRAINING_DATASETS[0][2], TRAINING_DATASETS[0][3] + 1))
    spec = random_spec(TRAINING_DATASETS[0][0], size, seed=int(rng.integers(2**31)))
    P = build_problem(spec, comm=fd.COMM_SELF).assemble_matrix()
    fp = fingerprint(mat_to_csr(P))
    assert fp["exact"] in {t["exact"] for t in training[fp["n"]]}
    perm = np.random.default_rng(1).permutation(fp["n"]).astype(PETSc.IntType)
    iset = PETSc.IS().createGeneral(perm, comm=PETSc.COMM_SELF)
    renumbered = fingerprint(mat_to_csr(P.permute(iset, iset)))
    assert renumbered["exact"] != fp["exact"] and renumbered["perm"] == fp["perm"]


def test_generator_refuses_the_held_out_families() -> None:
    """P3 and Q2 problems are held out of all training: check_trainable refuses them (the dataset
    generator calls it on every draw), and no draw of the training distributions is one of them."""
    from pcgcvae.problems import ProblemSpec, check_trainable, random_spec

    for spec in (ProblemSpec("poisson", 8, degree=3, mesh="square"), ProblemSpec("poisson", 8, degree=2, mesh="quad"),
                 ProblemSpec("elasticity", 4, degree=2, mesh="hex", dim=3)):
        with pytest.raises(ValueError, match="held out of all training"):
            check_trainable(spec)
    for spec in (ProblemSpec("poisson", 8, degree=2, mesh="square"), ProblemSpec("poisson", 8, degree=1, mesh="quad")):
        check_trainable(spec)
    drawn = set()
    for family in ("poisson", "elasticity"):
        for seed in range(400):
            for broad in (False, True):
                spec = random_spec(family, 12, seed=seed, broad=broad)
                check_trainable(spec)
                drawn.add((spec.mesh in ("quad", "hex"), spec.degree))
    assert (True, 1) in drawn and (False, 2) in drawn  # Q1 and P2 are drawn: the check is not vacuous


def test_mass_generator_draws_mass_dominated_problems() -> None:
    """``--mass`` (pcgcvae.problems.mass_spec): the broad draw's elements and meshes with a reaction
    term of 1e2-1e6 and every boundary condition, the same problem for the same seed; the mass term
    dominates the operator's diagonal on the strongest draws; Poisson only, P3 / Q2 never drawn."""
    from pcgcvae.problems import BOUNDARY_CONDITIONS, build_problem, check_trainable, random_spec

    bcs, reactions, dims = set(), [], set()
    for seed in range(60):
        spec = random_spec("poisson", 10, seed=seed, mass=True)
        check_trainable(spec)
        bcs.add(spec.params["bc"])
        reactions.append(spec.params["reaction"])
        dims.add(spec.dim)
        assert spec == random_spec("poisson", 10, seed=seed, mass=True)
    assert bcs == set(BOUNDARY_CONDITIONS) and dims == {2, 3}
    assert 1e2 <= min(reactions) and max(reactions) <= 1e6 and max(reactions) > 1e5
    spec = random_spec("poisson", 6, seed=0, mass=True)

    def diagonal(reaction: float) -> np.ndarray:
        changed = type(spec)(**{**spec.to_dict(), "params": {**spec.params, "reaction": reaction}})
        return build_problem(changed).assemble_matrix().getDiagonal().getArray()

    assert np.median(diagonal(1e6) / diagonal(0.0)) > 10  # the mass term dominates: the generator's point
    with pytest.raises(ValueError, match="family poisson"):
        random_spec("elasticity", 10, seed=0, mass=True)
    with pytest.raises(ValueError, match="choose one generator"):
        random_spec("poisson", 10, seed=0, mass=True, stencils=True)


def test_stencil_generator_draws_five_and_seven_point_problems() -> None:
    """``--stencils`` (pcgcvae.problems.stencil_spec): 5-point grids in 2D and 7-point grids in 3D,
    symmetric positive definite M-matrices with every coefficient kind drawn, the same matrix for the
    same seed; Poisson only, serial only; the suite's 9- and 27-point stencils are never drawn."""
    import scipy.sparse as sp
    from mpi4py import MPI

    from pcgcvae.problems import StencilProblem, build_problem, random_spec

    kinds, dims = set(), set()
    for seed in range(12):
        spec = random_spec("poisson", 10, seed=seed, stencils=True)
        a = build_problem(spec).matrix()
        m, d = spec.size, spec.dim
        assert spec.mesh == {2: "fd5", 3: "fd7"}[d] and a.shape == (m**d, m**d)
        assert np.diff(a.indptr).max() == 2 * d + 1  # interior points: the stencil, nothing wider
        assert abs(a - a.T).max() == 0.0
        off = a - sp.diags(a.diagonal())
        assert off.max() <= 0.0 and np.all(a.diagonal() > 0)  # an M-matrix's signs
        np.linalg.cholesky(a.toarray())  # positive definite, or LinAlgError
        kinds.add(spec.params["kappa"])
        dims.add(d)
    assert kinds == {"lognormal", "jumps", "aniso"} and dims == {2, 3}
    again = build_problem(random_spec("poisson", 10, seed=3, stencils=True)).matrix()
    first = build_problem(random_spec("poisson", 10, seed=3, stencils=True)).matrix()
    assert (again != first).nnz == 0
    P = StencilProblem(random_spec("poisson", 10, seed=3, stencils=True)).assemble_matrix()
    assert P.getSize() == first.shape and P.getType() == "seqaij"
    with pytest.raises(ValueError, match="family poisson"):
        random_spec("elasticity", 10, seed=0, stencils=True)
    if MPI.COMM_WORLD.size > 1:
        with pytest.raises(ValueError, match="serially"):
            build_problem(random_spec("poisson", 10, seed=0, stencils=True), comm=MPI.COMM_WORLD)


def test_candidate_models_replace_the_shipped_ones_by_block_size() -> None:
    """``--models``: a GCVAE row reads the candidate trained for the operator's block size; other
    block sizes and the other preconditioners keep their options."""
    from pcgcvae.foreign import PC_OPTIONS, candidate_models, pc_options_for

    scalar = str(ROOT / "tests" / "models" / "poisson-direct.npz")
    models = candidate_models([scalar, "elasticity", "poisson"])
    assert models[1] == scalar  # the first candidate for block size 1 wins
    assert models[2] == "elasticity" and 3 in models
    for pc in ("gcvae", "gcvae2-noguard"):
        assert pc_options_for(pc, 1, models) == {**PC_OPTIONS[pc], "pc_gcvae_model": scalar}
        assert pc_options_for(pc, 1, None) == PC_OPTIONS[pc]
    assert pc_options_for("gcvae", 6, models) == PC_OPTIONS["gcvae"]
    assert pc_options_for("fsai", 1, models) == PC_OPTIONS["fsai"]


def test_suite_runs_the_smoother_rows_when_named(tmp_path) -> None:
    """``--pcs`` takes the SPAI factors as GAMG smoothers too (not in the default run): they run and converge."""
    from pcgcvae.foreign import PCS, SMOOTHER_PCS, all_cases

    assert not set(SMOOTHER_PCS) & set(PCS)
    names = [c.name for c in all_cases() if c.quick and c.kind == "firedrake"][:2]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pcgcvae.bench", "--suite", "foreign", "--quick", "--no-c-runs",
                           "--problems", *names, "--pcs", *SMOOTHER_PCS, "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(tmp_path / "foreign.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["problem"], r["pc"]) for r in rows] == [(n, pc) for n in names for pc in SMOOTHER_PCS]
    assert all(r["converged"] == "True" and int(r["iterations"]) > 0 for r in rows), rows
