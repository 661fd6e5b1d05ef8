"""logger=wandb in offline mode through the real CLI, read back with `wandb leet inspect`
(W&B's own reader of a run's transaction log)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_metrics, run_entry, train_overrides


def test_wandb_offline_run_has_metrics_and_config(tmp_path: Path, cache_dir: Path) -> None:
    cli = run_entry(
        "train.py",
        *train_overrides(
            tmp_path,
            cache_dir,
            "logger=wandb",
            "logger.wandb.log_model=true",
            "model=gat",
            "data=cora",
            "trainer.max_epochs=5",
            "callbacks=default",
        ),
    )
    metrics = read_metrics(tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert f"W&B offline: upload later with `wandb sync {runs[0]}`" in cli.stdout
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # the CSV log is kept alongside
    summary = json.loads(_inspect(runs[0], "--summary"))
    text = json.dumps(summary)
    assert "test/acc" in text
    found = _find(summary, "test/acc")
    assert found is not None and abs(float(found) - metrics["test/acc"]) < 1e-6
    # the resolved config: model and data choices, and the learning rate
    assert _find(summary, "lr") == 0.005
    assert '"gat"' in text and '"cora"' in text
    # every picture is in the run as a W&B image
    images = summary["summary"]
    for key in ("tsne_before", "tsne_after", "degree_accuracy", "attention_summary",
                "attention_node", "degree_histogram"):  # fmt: skip
        assert images[f"pictures/{key}"]["_type"].startswith("images"), key
    # the run is finished, not left running
    assert "running" not in str(summary.get("state", "")).lower()
    # what a dashboard filters on: job type and tags (model, dataset)
    records = _records(runs[0])
    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["job_type"] == "train" and {"gat", "cora"} <= set(run["tags"])
    # the per-node predictions as a table: every node, the columns of the CSV
    table_ref = summary["summary"]["predictions"]
    assert table_ref["_type"] == "table-file" and table_ref["nrows"] == 2708
    table = json.loads((runs[0] / "files" / table_ref["path"]).read_text())
    columns = table["columns"]
    assert columns[:9] == ["node", "split", "degree", "label", "class", "prediction",
                           "predicted_class", "confidence", "correct"]  # fmt: skip
    rows = [dict(zip(columns, r, strict=True)) for r in table["data"]]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) == 1000
    accuracy = sum(r["correct"] for r in test_rows) / len(test_rows)
    assert abs(accuracy - metrics["test/acc"]) < 1e-6  # the table is the tested checkpoint
    assert all(r["correct"] == (r["label"] == r["prediction"]) for r in rows)
    assert {r["class"] for r in rows} >= {"Neural networks", "Theory"}  # Cora's names
    assert all(r["tsne_x"] is not None for r in test_rows)  # every test node is embedded
    # log_model=true: best.ckpt as a model artifact with alias "best"
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    model = [a for a in artifacts if a["type"] == "model"]
    assert len(model) == 1 and "best" in model[0]["aliases"]
    assert [c["path"] for c in model[0]["manifest"]["contents"]] == ["best.ckpt"]


def test_wandb_sweep_groups_its_runs_and_ends_with_a_summary_run(
    tmp_path: Path, cache_dir: Path
) -> None:
    sweep = tmp_path / "sweep"
    cli = run_entry(
        "train.py",
        "-m",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
        "callbacks=none",
        "logger=wandb",
        "model=gcn",
        "data=cora",
        "seed=0,1",
        "trainer.max_epochs=3",
    )
    jobs = sorted(sweep.glob("[0-9]/wandb/offline-run-*"))
    assert len(jobs) == 2
    for job in jobs:
        run = next(r["run"] for r in _records(job) if r["type"] == "run")
        assert run["run_group"] == str(sweep) and run["job_type"] == "train"
    (summary_dir,) = sweep.glob("wandb/offline-run-*")
    assert f"wandb sync {summary_dir}" in cli.stdout
    run = next(r["run"] for r in _records(summary_dir) if r["type"] == "run")
    assert run["run_group"] == str(sweep) and run["job_type"] == "sweep-summary"
    summary = json.loads(_inspect(summary_dir, "--summary"))["summary"]
    assert summary["results"]["_type"] == "table-file" and summary["results"]["nrows"] == 1
    assert summary["results_plot"]["_type"] == "image-file"
    table = json.loads((summary_dir / "files" / summary["results"]["path"]).read_text())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert row["n"] == 2 and row["model"] == "gcn"


def _inspect(run_dir: Path, *flags: str) -> str:
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    return subprocess.run(
        [wandb_cli, "leet", "inspect", *flags, "--json", str(run_dir)],
        capture_output=True,
        text=True,
        env=os.environ,
        check=True,
    ).stdout


def _records(run_dir: Path) -> list[dict]:
    """Every record of the run's transaction log."""
    return [json.loads(line) for line in _inspect(run_dir).splitlines() if line.strip()]


def _find(obj, key):
    """First value under ``key`` anywhere in a nested JSON object."""
    if isinstance(obj, dict):
        if key in obj:
            value = obj[key]
            return value.get("value", value) if isinstance(value, dict) else value
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find(v, key)
            if found is not None:
                return found
    return None
