"""Multirun sweeps through the real CLI, their failure handling, aggregation and Optuna."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir

from gnn_attn.analysis.aggregate import METRICS, aggregate, markdown
from gnn_attn.analysis.jobs import mean_interval
from gnn_attn.run.entry import check_command_line, with_seed_group_sweeper
from tests.conftest import CONF, run_entry, sweep_overrides


def sweep(tmp: Path, cache: Path, *overrides: str, check: bool = True):
    return run_entry("train.py", *sweep_overrides(tmp, cache), *overrides, check=check)


def test_sweep_then_aggregate_matches_job_metrics(tmp_path: Path, cache_dir: Path) -> None:
    proc = sweep(
        tmp_path, cache_dir, "model=mlp,gcn", "data=cora", "seed=0,1", "trainer.max_epochs=4"
    )
    assert "sweep: 4 of 4 jobs finished" in proc.stdout
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    metrics = [json.loads((p / "metrics.json").read_text()) for p in jobs]
    result = aggregate(tmp_path)
    assert result["jobs"] == 4 and result["problems"] == []
    for model in ("mlp", "gcn"):
        accs = [m["test/acc"] for m in metrics if m["model"] == model]
        (row,) = [r for r in result["rows"] if r.get("model") == model]
        assert row["n"] == 2
        assert row["test/acc_mean"] == pytest.approx(statistics.mean(accs))
        assert row["test/acc_std"] == pytest.approx(statistics.stdev(accs))
        epochs = [m["epochs"] for m in metrics if m["model"] == model]
        assert row["epochs_mean"] == pytest.approx(statistics.mean(epochs))
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    md = (tmp_path / "results.md").read_text()
    assert "| model | cora |" in md  # the paper layout: models × datasets
    mlp = next(r for r in result["rows"] if r.get("model") == "mlp")
    assert f"{100 * mlp['test/acc_mean']:.1f} ± {100 * mlp['test/acc_std']:.1f}" in md
    # the 95 % interval of the mean: t(0.975, 1 degree of freedom) = 12.706 for two seeds
    accs = [m["test/acc"] for m in metrics if m["model"] == "mlp"]
    half = 12.7062 * statistics.stdev(accs) / 2**0.5
    assert mlp["test/acc_ci95_low"] == pytest.approx(statistics.mean(accs) - half, abs=1e-4)
    assert mlp["test/acc_ci95_high"] == pytest.approx(statistics.mean(accs) + half, abs=1e-4)
    assert "95 % confidence interval" in md
    assert (tmp_path / "results.png").stat().st_size > 5_000


def test_failing_job_does_not_sink_the_sweep(tmp_path: Path, cache_dir: Path) -> None:
    # model.heads=0 is impossible: that job fails, the other finishes
    proc = sweep(
        tmp_path,
        cache_dir,
        "model=gat",
        "data=cora",
        "model.heads=0,2",
        "trainer.max_epochs=3",
        check=False,
    )
    assert proc.returncode == 1
    assert "model.heads must be an integer ≥ 1" in proc.stderr
    error = json.loads((tmp_path / "0" / "error.json").read_text())
    assert error["type"] == "UserError" and "model.heads" in error["error"]
    assert (tmp_path / "1" / "metrics.json").is_file()
    result = aggregate(tmp_path)
    assert len(result["problems"]) == 1 and result["problems"][0].endswith("/0")
    md = (tmp_path / "results.md").read_text()
    assert "1 of 2 jobs finished" in md and "failed" in md


def test_optuna_search_runs_trials_and_returns_the_objective(
    tmp_path: Path, cache_dir: Path
) -> None:
    proc = sweep(
        tmp_path,
        cache_dir,
        "hparams_search=gat_optuna",
        "data=cora",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.max_epochs=3",
    )
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_value" in results and "model.lr" in results
    values = [
        json.loads((tmp_path / str(i) / "metrics.json").read_text())["val/acc_best"]
        for i in range(3)
    ]
    best = float(results.split("best_value:")[1].split()[0])
    assert best == pytest.approx(max(values))
    assert "sweep: 3 of 3 jobs finished" in proc.stdout
    # it tunes GAT, stores its study, and ends with the best trial and Optuna's plots
    assert {
        json.loads((tmp_path / str(i) / "metrics.json").read_text())["model"] for i in range(3)
    } == {"gat"}
    study = optuna.load_study(study_name="gat_optuna", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 3 and study.best_value == pytest.approx(best)
    assert "best trial #" in proc.stdout and "python train.py" in proc.stdout
    assert (tmp_path / "optuna_history.png").is_file()
    assert (tmp_path / "optuna_importance.png").is_file()


@pytest.mark.parametrize("name", ["paper_table", "seed_article", "attention_ablation"])
def test_experiments_compose(tmp_path: Path, name: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"experiment={name}", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    params = cfg.hydra.sweeper.params
    if name == "paper_table":
        assert params.model == "mlp,gcn,gat,gatv2" and params.seed == "range(10)"
        assert params.data.startswith("cora,citeseer")
        assert cfg.callbacks is None or len(cfg.callbacks) == 0
    elif name == "seed_article":
        assert cfg.trainer.max_epochs == 200 and cfg.early_stopping.patience == 0
        assert cfg.data.name == "citeseer" and params.model == "gcn,gatv2"
    else:
        assert params["model.heads"] == "1,2,4,8" and params["model.version"] == "v1,v2"
        assert cfg.model.name == "gat"


def test_aggregate_counts_unfinished_jobs(tmp_path: Path) -> None:
    job = tmp_path / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text("- model=gat\n- seed=0\n")
    result = aggregate(tmp_path)
    assert result["jobs"] == 1 and len(result["problems"]) == 1
    assert math.isnan(result["rows"][0]["test/acc_mean"])
    assert "unfinished" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("argv", "sweeper", "added"),
    [
        (["-m", "seed=0,1"], "basic", True),
        (["-m", "model=gat,gcn", "seed=0,1"], "basic", True),  # a swept group: recomposed
        (["seed=0"], None, False),  # a single run: no sweeper
        (["-m", "seed=0,1", "hydra/sweeper=basic"], "basic", False),  # named: kept
        (["-m", "hparams_search=gat_optuna"], "optuna", False),
        (["experiment=paper_table"], "stacked", False),  # a sweep by its config
    ],
)
def test_sweeps_compose_one_job_per_seed_group_unless_a_sweeper_is_named(
    tmp_path: Path, argv: list[str], sweeper: str | None, added: bool
) -> None:
    argv = [*argv, f"hydra.sweep.dir={tmp_path}", f"hydra.run.dir={tmp_path}"]
    found = check_command_line(argv, "train")
    assert found == sweeper
    out = with_seed_group_sweeper(argv, found)
    assert out == ([*argv, "hydra/sweeper=stacked"] if added else argv)


def test_group_table_gives_the_interval_of_the_mean() -> None:
    row = {"group": "model.heads=2", "n": 3, "failed": 0, "unfinished": 0, "interrupted": 0}
    for m in METRICS:
        row[f"{m}_mean"], row[f"{m}_std"] = 0.5, 0.1
    # mean 0.82, std 0.02, t(0.975, 2) = 4.303: 0.82 ± 0.0497
    row["test/acc_ci95_low"], row["test/acc_ci95_high"] = mean_interval([0.80, 0.82, 0.84])
    table = markdown([row])
    assert "| 95 % interval |" in table and "| 77.0–87.0 |" in table
