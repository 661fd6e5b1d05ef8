"""Beyond one small graph, through the real CLI: mini-batch training, DDP on 2 CPU
processes, a sweep through submitit's local executor, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

from gnn_attn.analysis.aggregate import aggregate
from tests.conftest import read_metrics, run_cli, train_overrides


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


TINY_SBM = ["data=synthetic", "data.num_nodes=2000", "data.batch_size=64", "model=gat"]


def test_mini_batch_training_on_cora(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
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
    ev = tmp_path / "eval"
    run_cli(
        "eval.py",
        f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
        f"hydra.run.dir={ev}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
    )
    assert read_json(ev / "eval_metrics.json")["test/acc"] == m["test/acc"]


def test_ddp_on_two_cpu_processes_writes_one_run(tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "runs"
    out = runs / "ddp"
    run_cli(
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
    ev = tmp_path / "eval"
    run_cli(
        "eval.py",
        f"ckpt_path={out / 'checkpoints' / 'best.ckpt'}",
        f"hydra.run.dir={ev}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
    )
    e = read_json(ev / "eval_metrics.json")
    assert e["test/acc"] == m["test/acc"]
    assert e["val/acc"] == m["val/acc"]


def test_full_batch_ddp_is_refused_in_one_line(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *train_overrides(out, cache_dir, "data=cora"),
        "trainer=ddp_cpu",
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "data.loader=neighbor" in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()


def test_fanout_per_layer_is_checked(tmp_path: Path, cache_dir: Path) -> None:
    proc = run_cli(
        "train.py",
        *train_overrides(tmp_path / "run", cache_dir, "data=cora", "model=gat"),
        "data.loader=neighbor",
        "data.num_neighbors=[5,5,5]",
        check=False,
    )
    assert proc.returncode == 2
    assert "data.num_neighbors has 3 entries but model.layers=2" in proc.stderr


def test_sweep_through_submitit_local(tmp_path: Path, cache_dir: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        "hydra/launcher=local",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "print_config=false",
        "callbacks=none",
        "logger=none",
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


def test_ddp_jobs_in_a_sweep_each_write_one_run(tmp_path: Path, cache_dir: Path) -> None:
    """Two DDP jobs in turn in one sweep process: each starts and ends its own process
    group, and the sweep holds exactly its two job dirs."""
    sweep_dir = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.cache_dir={cache_dir}",
        "trainer=ddp_cpu",
        "trainer.enable_progress_bar=false",
        "print_config=false",
        "callbacks=none",
        "logger=none",
        *TINY_SBM,
        "seed=0,1",
        "trainer.max_epochs=2",
    )
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "1", "multirun.yaml"]
    for job in ("0", "1"):
        m = read_metrics(sweep_dir / job)
        assert m["processes"] == 2 and m["seed"] == int(job)


def test_out_of_memory_is_one_line_naming_mini_batches(tmp_path: Path, cache_dir: Path) -> None:
    """A real allocation failure (a model far too wide for memory) ends in one line."""
    out = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *train_overrides(out, cache_dir, "data=cora", "model=gat"),
        "model.hidden=1000000000",
        check=False,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: out of memory (could not allocate")
    assert "data.loader=neighbor" in last
    assert "Traceback" not in proc.stderr
    assert not (out / "metrics.json").exists()
