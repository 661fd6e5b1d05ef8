"""logger=wandb in offline mode through the real CLI, read back with `wandb leet inspect`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_metrics, run_cli, train_overrides


def test_wandb_offline_run_has_metrics_and_config(tmp_path: Path, cache_dir: Path) -> None:
    cli = run_cli(
        "train.py",
        *train_overrides(
            tmp_path,
            cache_dir,
            "logger=wandb",
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
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"
    proc = subprocess.run(
        [wandb_cli, "leet", "inspect", "--summary", "--json", str(runs[0])],
        capture_output=True,
        text=True,
        env=os.environ,
        check=True,
    )
    summary = json.loads(proc.stdout)
    text = json.dumps(summary)
    assert "test/acc" in text
    found = _find(summary, "test/acc")
    assert found is not None and abs(float(found) - metrics["test/acc"]) < 1e-6
    # the resolved config: model and data choices, and the learning rate
    assert _find(summary, "lr") == 0.005
    assert '"gat"' in text and '"cora"' in text
    # every picture is in the run as a W&B image
    images = summary["summary"]
    for key in ("tsne_before", "tsne_after", "degree_accuracy", "attention_entropy",
                "attention_node", "degree_histogram"):  # fmt: skip
        assert images[f"pictures/{key}"]["_type"].startswith("images"), key
    # the run is finished, not left running
    assert "running" not in str(summary.get("state", "")).lower()


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
