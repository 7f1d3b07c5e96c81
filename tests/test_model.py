"""The GCVAE: training lowers the loss, checkpoints round-trip and refuse
what they cannot trust, factors have a positive diagonal, sampling and data
generation are reproducible."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pcgcvae.errors import CheckpointError
from pcgcvae.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from pcgcvae.training.model import GCVAE, GCVAEConfig

META = {"family": "poisson", "block_sizes": [1], "pattern_levels": [1, 2]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pcgcvae.training.dataset import generate

    out = tmp_path_factory.mktemp("data")
    generate("poisson", 4, 5, 8, seed=11, out=out, progress=False)
    return out


def test_dataset_generation_is_deterministic(dataset, tmp_path) -> None:
    from pcgcvae.training.dataset import generate

    generate("poisson", 4, 5, 8, seed=11, out=tmp_path, progress=False)
    for f in sorted(dataset.glob("*.npz")):
        a = hashlib.sha256((dataset / f.name).read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / f.name).read_bytes()).hexdigest()
        assert a == b, f.name
    ia = json.loads((dataset / "index.json").read_text())["samples"]
    ib = json.loads((tmp_path / "index.json").read_text())["samples"]
    assert ia == ib


def test_training_steps_lower_the_loss(dataset) -> None:
    from torch_geometric.loader import DataLoader

    from pcgcvae.training.train import gcvae_loss, load_dataset

    torch.manual_seed(0)
    graphs, _ = load_dataset(dataset, [1, 2])
    model = GCVAE(GCVAEConfig(hidden=16, decoder_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    gen = torch.Generator().manual_seed(0)
    first, _ = gcvae_loss(model, batch, beta=0.01, generator=gen)
    for _ in range(30):
        loss, _ = gcvae_loss(model, batch, beta=0.01, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen = torch.Generator().manual_seed(0)
    last, parts = gcvae_loss(model, batch, beta=0.01, generator=gen)
    assert last.item() < 0.5 * first.item()
    assert parts["kaporin_gap"] >= -1e-4  # FSAI is the Kaporin minimiser


def test_frobenius_objective_trains(dataset) -> None:
    from torch_geometric.loader import DataLoader

    from pcgcvae.training.train import gcvae_loss, load_dataset

    torch.manual_seed(0)
    graphs, _ = load_dataset(dataset, [1])
    model = GCVAE(GCVAEConfig(hidden=16, decoder_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    losses = []
    for step in range(40):
        loss, _ = gcvae_loss(model, batch, beta=0.01, objective="frobenius",
                             generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])


def test_checkpoint_round_trip_bit_identical(tmp_path) -> None:
    torch.manual_seed(1)
    model = GCVAE(GCVAEConfig(hidden=8, decoder_layers=2))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "a" / "m.pt", model, META)
    loaded, info = load_checkpoint(tmp_path / "a" / "m.pt")
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert info["architecture"]["hidden"] == 8 and info["meta"]["family"] == "poisson"
    save_checkpoint(tmp_path / "b" / "m.pt", loaded, META)
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()


def test_incompatible_format_version_refused(tmp_path) -> None:
    save_checkpoint(tmp_path / "a.pt", GCVAE(GCVAEConfig(hidden=8)), META)
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(tmp_path / "b.pt")


def test_incompatible_architecture_refused(tmp_path) -> None:
    save_checkpoint(tmp_path / "a.pt", GCVAE(GCVAEConfig(hidden=8)), META)
    payload = torch.load(tmp_path / "a.pt", weights_only=True)
    payload["architecture"]["hidden"] = 16
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "b.pt")
    payload["architecture"]["attention_heads"] = 4
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="cannot build"):
        load_checkpoint(tmp_path / "c.pt")


def test_generated_factors_have_positive_diagonal(dataset) -> None:
    from pcgcvae.training.dataset import load_sample

    torch.manual_seed(3)
    model = GCVAE(GCVAEConfig(hidden=16))
    for p in model.parameters():  # a badly scaled random model still gives G_ii > 0
        torch.nn.init.normal_(p, std=2.0)
    for f in sorted(dataset.glob("*.npz")):
        g = load_sample(f, 2, triplets=False)
        for raw in model.generate(g, samples=3, generator=torch.Generator().manual_seed(0)):
            assert torch.all(raw[g.s_diag] > 0)


def test_sampling_is_reproducible(dataset) -> None:
    from pcgcvae.training.dataset import load_sample

    torch.manual_seed(0)
    model = GCVAE(GCVAEConfig(hidden=16))
    torch.nn.init.normal_(model.factor_head.out.weight, std=0.1)
    g = load_sample(sorted(dataset.glob("*.npz"))[0], 1, triplets=False)
    a = model.generate(g, samples=2, generator=torch.Generator().manual_seed(5))
    b = model.generate(g, samples=2, generator=torch.Generator().manual_seed(5))
    c = model.generate(g, samples=2, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_numpy_metadata_is_stored_as_plain_python(tmp_path) -> None:
    import numpy as np

    meta = {**META, "heldout": {"ratio": np.float64(0.5), "its": [np.int64(3)]}}
    save_checkpoint(tmp_path / "m.pt", GCVAE(GCVAEConfig(hidden=8)), meta)
    _, info = load_checkpoint(tmp_path / "m.pt")
    assert info["meta"]["heldout"] == {"ratio": 0.5, "its": [3]}
    assert type(info["meta"]["heldout"]["ratio"]) is float


def test_chunked_inference_matches(dataset, monkeypatch) -> None:
    """Huge graphs are generated in edge chunks (bounded memory): same factor."""
    import pcgcvae.training.model as model_module
    from pcgcvae.training.dataset import load_sample

    torch.manual_seed(0)
    model = GCVAE(GCVAEConfig(hidden=16))
    torch.nn.init.normal_(model.factor_head.out.weight, std=0.1)
    g = load_sample(sorted(dataset.glob("*.npz"))[0], 2, triplets=False)
    ref = model.generate(g, use_mean=True)[0]
    monkeypatch.setattr(model_module, "INFERENCE_CHUNK", 37)
    out = model.generate(g, use_mean=True)[0]
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-6)


def test_training_resumes(dataset, tmp_path) -> None:
    from pcgcvae.training.train import build_parser, train

    common = ["--data", str(dataset), "--family", "poisson", "--out", str(tmp_path / "m.pt"), "--hidden", "8",
              "--layers", "1", "--batch-size", "4", "--quiet", "--levels", "1"]
    train(build_parser().parse_args([*common, "--epochs", "2"]))
    first = torch.load(tmp_path / "m.pt.state", weights_only=False)
    assert first["epoch"] == 2
    train(build_parser().parse_args([*common, "--epochs", "4", "--resume"]))
    state = torch.load(tmp_path / "m.pt.state", weights_only=False)
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert state["history"][:2] == first["history"]
    _, info = load_checkpoint(tmp_path / "m.pt")
    assert info["meta"]["training"]["epochs"] == 4
    assert (tmp_path / "m.loss.png").is_file()


@pytest.mark.parametrize("name,block_sizes", [("poisson", [1]), ("elasticity", [2, 3])])
def test_shipped_models(name: str, block_sizes: list[int]) -> None:
    """The shipped models load by name, are small, and record what a card promises."""
    from pathlib import Path

    import pcgcvae
    from pcgcvae.training.checkpoint import load_model

    path = Path(pcgcvae.__file__).parent / "models" / f"{name}.pt"
    assert path.stat().st_size < 5 * 2**20
    model, info = load_model(name)
    from pcgcvae.inference import OPTIONAL_ARCHITECTURE

    # the architecture is recorded (fields added since, such as residual, at their default when absent)
    assert {"class": "GCVAE", **model.config.to_dict()} == {**OPTIONAL_ARCHITECTURE, **info["architecture"]}
    meta = info["meta"]
    assert meta["family"] == name and meta["block_sizes"] == block_sizes and meta["pattern_levels"] == [1, 2]
    assert meta["training"]["package_version"] and meta["training"]["epochs"] > 0
    summary = meta["heldout"]["summary"]
    assert max(summary["gcvae/fsai"]) <= 1.10  # within 10 % of classical FSAI on the held-out problems
    assert max(summary["gcvae/jacobi"]) < 0.6
    card = path.with_suffix(".md").read_text()
    assert f"`{name}`" in card and "Held-out" in card


def test_log_condition_matches_dense_reference(dataset) -> None:
    """log cond(G Â Gᵀ) per graph of a batch equals numpy's on each graph alone."""
    import numpy as np
    from torch_geometric.loader import DataLoader

    from pcgcvae.training.quality import log_condition_per_graph
    from pcgcvae.training.train import load_dataset

    graphs, index = load_dataset(dataset, [2])
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    rng = np.random.default_rng(0)
    g = torch.tensor(np.where(batch.s_diag.numpy(), rng.uniform(0.5, 1.5, batch.s_index.size(1)),
                              rng.uniform(-0.2, 0.2, batch.s_index.size(1))))  # a well-conditioned factor
    got = log_condition_per_graph(g, batch, max_n=10_000)
    assert len(got) == len(graphs)
    offset = 0
    for k, (graph, sample) in enumerate(zip(graphs, index["samples"])):
        z = np.load(dataset / sample["file"])
        n = len(z["indptr"]) - 1
        a = np.zeros((n, n))
        for i in range(n):
            a[i, z["indices"][z["indptr"][i]:z["indptr"][i + 1]]] = z["data"][z["indptr"][i]:z["indptr"][i + 1]]
        a = a.astype(np.float32).astype(np.float64)  # the graph carries Â in float32
        gm = np.zeros((n, n))
        r, c = graph.s_index.numpy()
        gm[r, c] = g[offset:offset + len(r)].numpy()
        offset += len(r)
        ev = np.linalg.eigvalsh(gm @ a @ gm.T)
        assert abs(float(got[k]) - np.log(ev[-1] / ev[0])) < 1e-8 * max(1.0, np.log(ev[-1] / ev[0]))
    assert len(log_condition_per_graph(g, batch, max_n=10)) == 0  # every graph is larger: skipped
    mask = torch.tensor([k % 2 == 0 for k in range(len(graphs))])  # the graphs a mask leaves in
    assert torch.equal(log_condition_per_graph(g, batch, 10_000, mask), got[mask])


def test_kaporin_only_datasets_leave_the_condition_term(dataset, tmp_path) -> None:
    """--kaporin-only: the graphs of those datasets carry cond = False (the batch's mask of the condition
    term), the others True; the index records it; a dataset not among --data is refused."""
    from torch_geometric.loader import DataLoader

    from pcgcvae.training.train import load_datasets

    graphs, index = load_datasets([dataset], [1], kaporin_only=[dataset])
    assert all(not bool(g.cond) for g in graphs) and index["datasets"][0]["kaporin_only"]
    graphs, index = load_datasets([dataset], [1])
    assert all(bool(g.cond) for g in graphs) and "kaporin_only" not in index["datasets"][0]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert batch.cond.shape == (3,) and bool(batch.cond.all())
    with pytest.raises(ValueError, match="not in --data"):
        load_datasets([dataset], [1], kaporin_only=[tmp_path])


def test_sparse_log_condition_matches_dense(dataset) -> None:
    """Above dense_max_n the condition term uses sparse extremal eigenvectors: same value and gradient."""
    from torch_geometric.loader import DataLoader

    from pcgcvae.training.quality import log_condition_per_graph
    from pcgcvae.training.train import load_dataset

    graphs, _ = load_dataset(dataset, [1, 2])
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    gen = torch.Generator().manual_seed(0)
    n_s = batch.s_index.size(1)
    g = torch.where(batch.s_diag, 0.5 + torch.rand(n_s, generator=gen, dtype=torch.float64),
                    0.4 * torch.rand(n_s, generator=gen, dtype=torch.float64) - 0.2).requires_grad_(True)
    dense = log_condition_per_graph(g, batch, max_n=10_000)
    (grad_dense,) = torch.autograd.grad(dense.sum(), g)
    sparse = log_condition_per_graph(g, batch, max_n=10_000, dense_max_n=0)
    (grad_sparse,) = torch.autograd.grad(sparse.sum(), g)
    assert len(sparse) == len(graphs)
    assert torch.allclose(sparse, dense, rtol=1e-7, atol=1e-9)
    assert float((grad_sparse - grad_dense).norm() / grad_dense.norm()) < 1e-4


def test_finetune_with_condition_term(dataset, tmp_path) -> None:
    """--init fine-tunes a checkpoint, --cond-weight adds the logged condition term; both are recorded."""
    from pcgcvae.training.train import build_parser, train

    common = ["--data", str(dataset), "--family", "poisson", "--hidden", "8", "--layers", "1", "--batch-size", "4",
              "--quiet", "--levels", "1"]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "a.pt"), "--epochs", "2"]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "b.pt"), "--epochs", "1",
                                     "--init", str(tmp_path / "a.pt"), "--cond-weight", "1.0",
                                     "--heldout", "8", "--heldout-samples", "1"]))
    state = torch.load(tmp_path / "b.pt.state", weights_only=False)
    assert "log_cond" in state["history"][0] and state["history"][0]["log_cond"] > 0
    _, info = load_checkpoint(tmp_path / "b.pt")
    assert info["meta"]["training"]["init"] == str(tmp_path / "a.pt")
    assert info["meta"]["training"]["cond_weight"] == 1.0
    # --heldout on a level-1-only model: GCVAE at level 1 only (FSAI at both), recorded and in the card
    (row,) = info["meta"]["heldout"]["rows"]
    assert row["gcvae"] > 0 and "gcvae2" not in row and row["fsai2"] > 0
    assert set(info["meta"]["heldout"]["summary"]) == {"gcvae/jacobi", "gcvae/fsai"}
    assert f"| 8 | 81 | {row['jacobi']} | {row['fsai']} | {row['gcvae']} | {row['fsai2']} | - |" in (
        (tmp_path / "b.md").read_text())


def test_heldout_cli_records_metrics_and_card(tiny_poisson, tmp_path, capsys) -> None:
    """`python -m pcgcvae.training.heldout CKPT --sizes ...` stores the held-out metrics in the checkpoint and its card;
    hand-written notes below the card's marker survive the rewrite."""
    import shutil

    from pcgcvae.training.heldout import NOTES_MARKER, main

    ckpt = tmp_path / "copy.pt"
    shutil.copy(tiny_poisson, ckpt)
    ckpt.with_suffix(".md").write_text(f"stale generated part\n{NOTES_MARKER}\nhow this model was made\n")
    main([str(ckpt), "--sizes", "10", "--samples", "2"])
    meta = load_checkpoint(ckpt)[1]["meta"]
    (row,) = meta["heldout"]["rows"]
    assert row["size"] == 10 and row["n"] == 121 and row["gcvae"] > 0 and row["jacobi"] > row["fsai"]
    assert len(row["sample_scores"]) == 2
    card = ckpt.with_suffix(".md").read_text()
    assert "Held-out" in card and "| 10 | 121 |" in card
    assert "stale generated part" not in card and card.endswith(f"{NOTES_MARKER}\nhow this model was made\n")
    assert "Held-out" in capsys.readouterr().out


def test_training_on_several_datasets(dataset, tmp_path) -> None:
    """--data takes several dataset directories; the checkpoint records all of them."""
    from pcgcvae.training.dataset import generate
    from pcgcvae.training.train import build_parser, train

    extra = tmp_path / "extra"
    generate("poisson", 2, 9, 10, seed=12, out=extra, progress=False)
    out = tmp_path / "m.pt"
    train(build_parser().parse_args(["--data", str(dataset), str(extra), "--family", "poisson", "--hidden", "8",
                                     "--layers", "1", "--batch-size", "4", "--quiet", "--levels", "1",
                                     "--epochs", "1", "--out", str(out)]))
    tr = load_checkpoint(out)[1]["meta"]["training"]
    assert tr["samples"] == 6 and tr["size_range"] == [5, 10] and tr["dataset_seed"] == [11, 12]
    assert tr["data"] == f"{dataset} {extra}"
    with pytest.raises(ValueError, match="--heldout-3d needs --family elasticity"):  # refused before training
        train(build_parser().parse_args(["--data", str(dataset), "--family", "poisson", "--heldout-3d", "8",
                                         "--quiet", "--out", str(tmp_path / "h.pt")]))
    assert not (tmp_path / "h.pt.state").exists()
    with pytest.raises(ValueError, match="--family elasticity, but the dataset holds poisson"):
        train(build_parser().parse_args(["--data", str(dataset), "--family", "elasticity", "--epochs", "1",
                                         "--quiet", "--out", str(tmp_path / "e.pt")]))


def test_datasets_record_their_ordering(dataset, tmp_path) -> None:
    """Samples are stored in the local ordering the PC will use; orderings are never mixed."""
    from pcgcvae.training.dataset import generate
    from pcgcvae.training.train import build_parser, train

    assert json.loads((dataset / "index.json").read_text())["ordering"] == "nd"
    other = tmp_path / "natural"
    generate("poisson", 2, 5, 6, seed=13, out=other, progress=False, ordering="natural")
    with pytest.raises(ValueError, match="different local orderings"):
        train(build_parser().parse_args(["--data", str(dataset), str(other), "--family", "poisson",
                                         "--quiet", "--out", str(tmp_path / "m.pt")]))
    out = tmp_path / "n.pt"
    train(build_parser().parse_args(["--data", str(other), "--family", "poisson", "--hidden", "8", "--layers", "1",
                                     "--levels", "1", "--epochs", "1", "--quiet", "--out", str(out)]))
    assert load_checkpoint(out)[1]["meta"]["ordering"] == "natural"
