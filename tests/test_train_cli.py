"""train.py and eval.py through the real Hydra CLI, on the shipped Cora files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_metrics, run_cli, run_entry, train_overrides

METRIC_KEYS = {
    "dataset",
    "model",
    "seed",
    "test/acc",
    "val/acc_best",
    "best_epoch",
    "epochs",
    "fit_seconds",
    "ms_per_epoch",
    "num_params",
}


def _repo_state() -> set[str]:
    """Untracked and ignored paths of the checkout (bytecode caches aside)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line for line in out.splitlines() if "__pycache__" not in line}


@pytest.fixture(scope="module")
def gat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str], set[str]]:
    """GAT (paper recipe) on Cora for 50 epochs, launched from an empty working dir with
    every output root in a temp dir."""
    base = tmp_path_factory.mktemp("gat_run")
    cwd, out, cache = base / "cwd", base / "out", base / "cache"
    cwd.mkdir()
    before = _repo_state()
    run_cli(
        "train.py",
        *train_overrides(
            out, cache, "model=gat", "data=cora", "trainer.max_epochs=50", "callbacks=default"
        ),
        cwd=cwd,
    )
    return out, cwd, before, _repo_state()


def test_gat_learns_on_cora(gat_run) -> None:
    out = gat_run[0]
    m = read_metrics(out)
    assert m.keys() >= METRIC_KEYS
    assert (m["model"], m["dataset"], m["seed"], m["epochs"]) == ("gat", "Cora", 0, 50)
    assert m["test/acc"] > 0.70, m
    assert 0 <= m["best_epoch"] < 50
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").is_file()


def test_run_writes_nothing_outside_its_output_dir(gat_run) -> None:
    out, cwd, before, after = gat_run
    assert after == before, sorted(after ^ before)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["cache", "cwd", "out"]


def test_eval_reproduces_test_accuracy(gat_run, tmp_path: Path) -> None:
    out = gat_run[0]
    proc = run_entry(
        "eval.py",
        f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
        f"hydra.run.dir={tmp_path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer=cpu",
    )
    evaluated = json.loads((tmp_path / "eval_metrics.json").read_text())
    trained = read_metrics(out)
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert evaluated["val/acc"] == pytest.approx(trained["val/acc"], abs=1e-6)
    assert "test/acc" in proc.stdout


@pytest.mark.parametrize("model", ["mlp", "gcn", "gatv2"])
def test_each_backbone_trains_through_the_cli(model: str, tmp_path: Path, cache_dir: Path) -> None:
    proc = run_entry(
        "train.py",
        *train_overrides(
            tmp_path, cache_dir, f"model={model}", "data=cora", "trainer.max_epochs=5", "seed=3"
        ),
    )
    m = read_metrics(tmp_path)
    assert m.keys() >= METRIC_KEYS
    assert (m["model"], m["dataset"], m["seed"], m["epochs"]) == (model, "Cora", 3, 5)
    assert 0.0 <= m["test/acc"] <= 1.0 and m["num_params"] > 0
    # ms_per_epoch = fit_seconds / epochs (fit_seconds is rounded to 0.1 ms)
    assert m["ms_per_epoch"] == pytest.approx(1000 * m["fit_seconds"] / 5, abs=0.011)
    assert f"{model} on Cora (seed 3): test/acc" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_citeseer_default_run_prints_summary(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_entry("train.py", *train_overrides(tmp_path, cache_dir, "trainer.max_epochs=3"))
    m = read_metrics(tmp_path)
    assert (m["model"], m["dataset"]) == ("gatv2", "CiteSeer")
    assert "CiteSeer: 3327 nodes" in proc.stdout
    assert "gatv2 on CiteSeer (seed 0): test/acc" in proc.stdout


def test_bad_checkpoint_path_is_one_line_error(tmp_path: Path) -> None:
    proc = run_entry(
        "eval.py",
        f"ckpt_path={tmp_path / 'nope.ckpt'}",
        f"hydra.run.dir={tmp_path / 'ev'}",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: checkpoint not found")
    assert "Traceback" not in proc.stderr


def test_pubmed_offline_is_one_line_error(tmp_path: Path) -> None:
    proc = run_entry(
        "train.py",
        *train_overrides(
            tmp_path / "out",
            tmp_path / "cache",
            "data=pubmed",
            f"paths.data_dir={tmp_path / 'data'}",
        ),
        check=False,
    )
    if proc.returncode == 0:
        pytest.skip("PubMed could be downloaded here (network access); offline path not testable")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: PubMed raw files are not in") and "ind.pubmed" in last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


PICTURES = (
    "tsne_before.png",
    "tsne_after.png",
    "degree_accuracy.png",
    "attention_summary.png",
    "attention_node.png",
    "degree_histogram.png",
)


def test_run_draws_every_picture(gat_run) -> None:
    out = gat_run[0]
    for name in PICTURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 10_000, (name, len(data))  # a real figure, not an empty canvas
    m = read_metrics(out)
    for key in ("tsne/silhouette_before", "tsne/silhouette_after"):
        assert -1.0 <= m[key] <= 1.0
    # trained embeddings separate the classes better than random ones
    assert m["tsne/silhouette_after"] > m["tsne/silhouette_before"]
    assert 0 < m["attention/self_share_l1"] < 1
    rows = (out / "degree_accuracy.csv").read_text().splitlines()
    assert rows[0].startswith("bucket,low,count,correct,accuracy")
    assert sum(int(r.split(",")[2]) for r in rows[1:]) == 1000  # every test node counted
    stats = json.loads((out / "dataset.json").read_text())
    assert (stats["nodes"], stats["classes"]) == (2708, 7)
    att = __import__("torch").load(out / "attention.pt")
    assert len(att["layers"]) == 2 and att["layers"][0]["alpha"].shape[1] == 8
    # GAT's attention is static whatever it learned (Brody et al.'s theorem)
    assert m["attention/static_l1"] >= 0.999 and m["attention/static_l2"] >= 0.999
    assert len(att["layers"][0]["static"]["per_head"]) == 8
    assert 0 < m["train/acc"] <= 1


def test_test_report_agrees_with_the_predictions(gat_run, tmp_path: Path) -> None:
    """test/f1_macro and test/acc_per_class (torchmetrics) equal scikit-learn's on the
    test rows of predictions.csv; eval.py reports the same; the confusion matrix is drawn."""
    import csv

    from sklearn.metrics import f1_score

    out = gat_run[0]
    m = read_metrics(out)
    with (out / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    labels = [int(r["label"]) for r in rows]
    preds = [int(r["prediction"]) for r in rows]
    assert m["test/f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-6)
    per_class = m["test/acc_per_class"]
    assert len(per_class) == 7 and "Neural networks" in per_class
    for name, acc in per_class.items():
        mine = [p == y for p, y, r in zip(preds, labels, rows, strict=True) if r["class"] == name]
        assert acc == pytest.approx(sum(mine) / len(mine), abs=1e-6), name
    data = (out / "confusion_matrix.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    run_entry("eval.py", f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
              f"hydra.run.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
              "trainer=cpu")  # fmt: skip
    evaluated = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert evaluated["test/f1_macro"] == pytest.approx(m["test/f1_macro"], abs=1e-6)
    assert evaluated["test/acc_per_class"] == pytest.approx(per_class, abs=1e-6)


def test_single_metric_selection_as_the_readme_gives_it(tmp_path: Path, cache_dir: Path) -> None:
    """early_stopping.monitors=[val/acc:max] replaces the default pair: the run's
    config.yaml holds it alone, and the selected epoch is the last with the best val/acc
    (ties count as improvements), whatever val/loss did."""
    import csv

    import yaml

    out = tmp_path / "run"
    run_entry("train.py", *train_overrides(
        out, cache_dir, "model=gcn", "data=cora", "trainer.max_epochs=60",
        "early_stopping.monitors=[val/acc:max]",
    ))  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["early_stopping"]["monitors"] == ["val/acc:max"]
    with (out / "csv" / "metrics.csv").open() as f:
        # the epochs' rows (validate() on best.ckpt adds a row without val/acc_best)
        acc = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc_best")]
    assert len(acc) == 60
    best = max(acc)
    assert read_metrics(out)["best_epoch"] == max(i for i, a in enumerate(acc) if a == best)
