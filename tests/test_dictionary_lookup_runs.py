"""DictionaryLookup through the real CLI: runs on many graphs, the static score of a
trained GAT, eval.py on a run's checkpoint, and the experiment's sweep pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import read_metrics, run_entry, sweep_overrides, train_overrides


@pytest.fixture(scope="module")
def lookup_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GAT and GATv2 (the paper's model, the recipe) on DictionaryLookup with k = 5."""
    base = tmp_path_factory.mktemp("lookup")
    runs = {}
    for model in ("gat", "gatv2"):
        out = base / model
        run_entry("train.py", *train_overrides(
            out, base / "cache", f"model={model}", "data=dictionary_lookup", "data.k=5",
            "trainer.max_steps=150", "callbacks=attention", "logger=none",
        ))  # fmt: skip
        runs[model] = out
    return runs


def test_runs_on_many_graphs_report_fit_test_and_static_attention(lookup_runs) -> None:
    for model, out in lookup_runs.items():
        m = read_metrics(out)
        assert m["dataset"] == "DictionaryLookup-k5" and m["model"] == model
        for key in ("train/acc", "val/acc", "test/acc"):
            assert 0.0 <= m[key] <= 1.0
        assert m["epochs"] == 50  # 150 steps of 3 batches (96 training graphs, 32 each)
        att = torch.load(out / "attention.pt")
        assert att["matrix"]["alpha"].shape == (5, 5)  # queries × key–value nodes
        assert torch.allclose(att["matrix"]["alpha"].sum(1), 1 - _self_share(att), atol=1e-5)
        assert (out / "attention_matrix.png").read_bytes()[:4] == b"\x89PNG"
    gat = read_metrics(lookup_runs["gat"])
    assert gat["attention/static_l1"] >= 0.999  # static by construction
    static = torch.load(lookup_runs["gat"] / "attention.pt")["layers"][0]["static"]
    assert static["per_head"] == [1.0] and static["compared"] > 0


def _self_share(att: dict) -> torch.Tensor:
    """What each query of the drawn graph gives itself (its self-loop)."""
    layer = att["layers"][0]
    ei, alpha = layer["edge_index"], layer["alpha"].mean(1)
    rows = att["matrix"]["rows"]
    return torch.stack([alpha[(ei[0] == r) & (ei[1] == r)].sum() for r in rows.tolist()])


def test_eval_reproduces_a_lookup_run(lookup_runs, tmp_path: Path) -> None:
    out = lookup_runs["gatv2"]
    run_entry("eval.py", f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
            f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer=cpu")  # fmt: skip
    evaluated = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(read_metrics(out)["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_experiment_ends_with_its_table_and_pictures(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    overrides = [o for o in sweep_overrides(sweep, tmp_path / "cache") if o != "callbacks=none"]
    proc = run_entry("train.py", *overrides, "experiment=dictionary_lookup",
                   "callbacks=attention", "data.k=3,4,5", "seed=0,1",
                   "+lookup_model=gat_1h,gatv2_1h", "trainer.max_steps=20")  # fmt: skip
    assert "accuracy_vs_data.k.png" in proc.stdout
    for name in ("accuracy_vs_data.k.png", "static_attention.png", "attention_matrices.png"):
        data = (sweep / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000, name
    table = (sweep / "results.md").read_text()
    assert "train/acc (%)" in table and "lookup_model=gatv2_1h,data.k=4" in table
    rows = [line for line in table.splitlines() if line.startswith("| +lookup_model")]
    assert len(rows) == 6 and all("| 2 |" in r for r in rows)  # 2 seeds in every cell


@pytest.mark.slow
def test_ddp_shares_the_graphs_and_evaluates_each_once(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    run_entry("train.py", *train_overrides(
        out, tmp_path / "cache", "trainer=ddp_cpu", "model=gatv2", "data=dictionary_lookup",
        "data.k=5", "data.split=[0.8,0.1,0.04]", "trainer.max_steps=30", "logger=none",
    ))  # fmt: skip
    trained = read_metrics(out)
    assert trained["processes"] == 2
    # 5 test graphs: 3 and 2 per rank (a padded sampler would score one twice)
    run_entry("eval.py", f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
            f"hydra.run.dir={tmp_path / 'eval'}", f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer=cpu")  # fmt: skip
    evaluated = json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())
    for key in ("train/acc", "train/loss", "val/acc", "test/acc", "test/loss"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-5), key
