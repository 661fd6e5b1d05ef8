"""Beyond one small graph, through the real CLI: mini-batch training, DDP on 2 CPU
processes, a sweep through submitit's local executor (their errors: test_hardening)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gnn_attn.analysis.aggregate import aggregate
from tests.conftest import read_metrics, run_entry, sweep_overrides, train_overrides


def evaluate(run: Path, out: Path, cache_dir: Path) -> dict:
    """eval.py on a run's best checkpoint, in one process; its eval_metrics.json."""
    best = run / "checkpoints" / "best.ckpt"
    run_entry(
        "eval.py", f"ckpt_path={best}", f"hydra.run.dir={out}", f"paths.cache_dir={cache_dir}"
    )
    return json.loads((out / "eval_metrics.json").read_text())


TINY_SBM = ["data=synthetic", "data.num_nodes=2000", "data.batch_size=64", "model=gat"]


def test_mini_batch_training_on_cora(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    proc = run_entry(
        "train.py",
        *train_overrides(out, cache_dir, "data=cora", "model=gat"),
        "data.loader=neighbor",
        "data.batch_size=64",
        "trainer.max_epochs=15",
    )
    assert "mini-batches of 64, fan-out [10, 10]" in proc.stdout
    m = read_metrics(out)
    assert m["epochs"] == 15
    assert m["test/acc"] > 0.3  # 7 classes: chance is ~0.14 (15 epochs of 3 batches)
    assert (out / "checkpoints" / "best.ckpt").is_file()
    # exact evaluation (all neighbours): eval.py reproduces the run's test accuracy
    assert evaluate(out, tmp_path / "eval", cache_dir)["test/acc"] == m["test/acc"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "runs"
    out = runs / "ddp"
    run_entry(
        "train.py",
        *train_overrides(out, cache_dir, *TINY_SBM),
        "trainer=ddp_cpu",
        "trainer.max_epochs=4",
        "callbacks=tsne",
        "callbacks.tsne.max_nodes=500",  # the subset path
        "logger=csv",
    )
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # one output dir, no extra ones
    metrics_files = list(tmp_path.rglob("metrics.json"))
    assert metrics_files == [out / "metrics.json"]
    m = read_metrics(out)
    assert m["processes"] == 2 and m["epochs"] == 4
    assert (out / "tsne_after.png").is_file()  # pictures: rank 0 draws them
    # the 2 ranks' metrics were summed exactly: one process evaluating the same
    # checkpoint (all neighbours) gets the same accuracy
    e = evaluate(out, tmp_path / "eval", cache_dir)
    assert e["test/acc"] == m["test/acc"]
    assert e["val/acc"] == m["val/acc"]


@pytest.mark.slow
def test_sweep_through_submitit_local(tmp_path: Path, cache_dir: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run_entry(
        "train.py",
        *sweep_overrides(sweep_dir, cache_dir),
        "hydra/launcher=local",
        "data=cora",
        "model=mlp",
        "seed=0,1",
        "trainer.max_epochs=3",
    )
    assert (sweep_dir / ".submitit").is_dir()  # the jobs ran under submitit
    for job in ("0", "1"):
        assert read_metrics(sweep_dir / job)["epochs"] == 3
    result = aggregate(sweep_dir)
    assert result["jobs"] == 2 and result["problems"] == []
    assert [row["n"] for row in result["rows"]] == [2]  # the seeds form one group
    assert (sweep_dir / "results.csv").is_file()


@pytest.mark.slow
def test_ddp_jobs_in_a_sweep_each_write_one_run(tmp_path: Path, cache_dir: Path) -> None:
    """Two DDP jobs in turn in one sweep process: each starts and ends its own process
    group, and the sweep holds exactly its two job dirs."""
    sweep_dir = tmp_path / "sweep"
    run_entry(
        "train.py",
        *sweep_overrides(sweep_dir, cache_dir, trainer="ddp_cpu"),
        *TINY_SBM,
        "seed=0,1",
        "trainer.max_epochs=2",
    )
    names = sorted(p.name for p in sweep_dir.iterdir())  # + the table every sweep ends with
    assert names == [
        "0",
        "1",
        "multirun.yaml",
        "results.csv",
        "results.md",
        "results.png",
        "sweep.yaml",  # what the sweep is: its continuation checks it
    ]
    for job in ("0", "1"):
        m = read_metrics(sweep_dir / job)
        assert m["processes"] == 2 and m["seed"] == int(job)
