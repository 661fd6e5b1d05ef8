"""An interrupted sweep continues: the same command with the same ``hydra.sweep.dir=``
keeps the finished jobs untouched, resumes the unfinished stacks from their checkpoints
and the lone jobs from their ``last.ckpt``, and ends as the unbroken sweep would (bit for
bit on the CPU); another sweep pointed at the dir is refused. Real CLI, real kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import read_metrics, run_cli, start_train, sweep_overrides

pytestmark = pytest.mark.slow

KEYS = ("test/acc", "val/acc_best", "best_epoch", "epochs")
SWEEP = [
    "model=gat,gcn",
    "data=cora",
    "seed=0,1",
    "trainer.max_epochs=200",
    "early_stopping.patience=100000",
    "checkpoint.every_n_epochs=50",
]


def start(*overrides: str) -> subprocess.Popen:
    return start_train(*overrides, new_session=True)


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {pattern} in {folder}"
        time.sleep(0.05)


def results(sweep: Path, jobs: int) -> list[dict]:
    return [{k: read_metrics(sweep / str(i))[k] for k in KEYS} for i in range(jobs)]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> list[dict]:
    sweep = tmp_path_factory.mktemp("unbroken")
    run_cli("train.py", *sweep_overrides(sweep, cache_dir), *SWEEP)
    return results(sweep, 4)


def test_kill_9_then_continue_equals_the_unbroken_sweep(
    tmp_path: Path, cache_dir: Path, unbroken: list[dict]
) -> None:
    sweep = tmp_path / "sweep"
    args = [*sweep_overrides(sweep, cache_dir), *SWEEP]
    proc = start(*args)
    wait_for("*/checkpoints/stack.ckpt", sweep, proc)
    time.sleep(random.Random(0).uniform(0.0, 1.5))  # some moment after a checkpoint
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the launcher and its workers
    proc.communicate()
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/**/*") if p.is_file()}
    finished = [d for d in sweep.iterdir() if (d / "metrics.json").is_file()]
    out = run_cli("train.py", *args)
    assert results(sweep, 4) == unbroken
    for d in finished:  # the jobs that had finished: not one file rewritten
        for p in d.glob("**/*"):
            if p.is_file():
                assert p.stat().st_mtime_ns == before[p], p
    resumed = [d for d in sweep.iterdir() if d.is_dir() and d not in finished]
    if resumed:
        assert "resumed at epoch" in out.stdout
    assert "4 of 4 jobs finished" in out.stdout  # one table over all its jobs
    assert not list(sweep.glob("*/checkpoints/stack*.ckpt"))  # removed once written


def test_ctrl_c_checkpoints_the_stack_and_says_how_to_continue(
    tmp_path: Path, cache_dir: Path, unbroken: list[dict]
) -> None:
    sweep = tmp_path / "sweep"
    args = [*sweep_overrides(sweep, cache_dir), *SWEEP, "hydra.launcher.n_jobs=1"]
    proc = start(*args)
    wait_for("0/checkpoints/stack.ckpt", sweep, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Continue it with:" in err and f"hydra.sweep.dir={sweep}" in err
    # a kill cut the write of one member's checkpoint short: the earlier ones serve
    newest = sweep / "1" / "checkpoints" / "stack.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])
    run_cli("train.py", *args)
    assert results(sweep, 4) == unbroken


def test_a_lone_job_continues_from_its_last_ckpt(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        *sweep_overrides(sweep, cache_dir),
        "hydra/launcher=basic",
        "model=gcn",
        "data=cora",
        "seed=0,1",
        "trainer.max_epochs=120",
        "early_stopping.patience=100000",
        "checkpoint.every_n_epochs=20",
    ]
    proc = start(*args)
    wait_for("1/checkpoints/last.ckpt", sweep, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    out = run_cli("train.py", *args)
    assert "1 of 2 jobs had finished" in out.stdout or "2 to run" in out.stdout
    assert "resuming from its last.ckpt" in out.stdout
    fresh = tmp_path / "fresh"
    run_cli("train.py", *[f"hydra.sweep.dir={fresh}" if "sweep.dir" in a else a for a in args])
    assert results(sweep, 2) == results(fresh, 2)


def test_another_sweep_at_a_used_dir_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*sweep_overrides(sweep, cache_dir), "model=mlp", "data=cora", "seed=0,1"]
    run_cli("train.py", *args, "trainer.max_epochs=5")
    files = {p: p.stat().st_mtime_ns for p in sweep.glob("**/*") if p.is_file()}
    for other in (["model=gcn"], ["trainer.max_epochs=6"]):
        out = run_cli("train.py", *args, "trainer.max_epochs=5", *other, check=False)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: hydra.sweep.dir="), out.stderr
        assert other[0].split("=")[0] in lines[0]  # names the first difference
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("**/*") if p.is_file()} == files


def test_an_optuna_study_killed_mid_trial_ends_with_n_trials(
    tmp_path: Path, cache_dir: Path
) -> None:
    sweep = tmp_path / "search"
    args = [
        "hparams_search=gat_optuna",
        "data=cora",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache_dir}",
        "trainer=cpu",
        "hydra.sweeper.n_trials=3",
        "trainer.max_epochs=200",
        "early_stopping.patience=100000",
        "checkpoint.every_n_epochs=10",
    ]
    proc = start(*args)
    wait_for("1/checkpoints/last.ckpt", sweep, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    out = run_cli("train.py", *args)
    assert "interrupted (asked again)" in out.stdout
    study = optuna.load_study(study_name="gat_optuna", storage=f"sqlite:///{sweep}/optuna.db")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert "resuming from its last.ckpt" in out.stdout  # the retried trial, in its dir
    done = sorted(int(d.name) for d in sweep.iterdir() if (d / "metrics.json").is_file())
    assert done == [0, 1, 3]  # trial 1 again in job 1; job 2's number went to it
