"""Nothing lost: periodic atomic checkpoints, kill -9 and resume in the same run dir,
SIGINT/SIGTERM in any phase, ``ckpt_path=auto`` (real CLI, real Trainer, Cora)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from gnn_attn.analysis.aggregate import aggregate
from gnn_attn.callbacks.selection import EarlyStoppingCheckpoint
from tests.conftest import ROOT, read_metrics, run_entry, start_train

COMMON = ["trainer=cpu", "print_config=false", "callbacks=none", "model=gat", "data=cora",
          "seed=5", "trainer.max_epochs=100", "early_stopping.patience=1000",
          "checkpoint.every_n_epochs=10"]  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def _csv_epochs(run: Path) -> Counter:
    """(epoch, logged keys) of every row of the run's metrics.csv."""
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return Counter(
            (r["epoch"], tuple(sorted(k for k, v in r.items() if v not in ("", None))))
            for r in csv.DictReader(f)
        )


@pytest.mark.slow
def test_kill_9_then_resume_in_place_equals_an_unbroken_run(tmp_path: Path, cache_dir) -> None:
    cache = f"paths.cache_dir={cache_dir}"
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_entry("train.py", *COMMON, cache, f"hydra.run.dir={whole}")
    proc = start_train(*COMMON, cache, f"hydra.run.dir={broken}")
    last = broken / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)  # the first periodic checkpoint (epoch 10)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (broken / "metrics.json").exists()  # killed mid-training
    killed_at = torch.load(last, weights_only=False)["epoch"]
    assert killed_at < 99
    # the resume continues in the run's own dir (no hydra.run.dir given)
    cli = run_entry("train.py", *COMMON, cache, f"ckpt_path={last}")
    assert str(broken) in cli.stdout
    for name in ("last.ckpt", "best.ckpt"):
        a = torch.load(whole / "checkpoints" / name, weights_only=False)["state_dict"]
        b = torch.load(broken / "checkpoints" / name, weights_only=False)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ma, mb = read_metrics(whole), read_metrics(broken)
    for key in ("test/acc", "val/acc", "val/acc_best", "best_epoch", "epochs"):
        assert ma[key] == mb[key], key
    # each epoch once in the same metrics.csv, as in the unbroken run
    assert _csv_epochs(broken) == _csv_epochs(whole)
    # the timing of each part, labelled
    first, second = mb["parts"]
    assert (first["first_epoch"], second["first_epoch"]) == (0, first["last_epoch"] + 1)
    assert second["last_epoch"] == 99 and second["ms_per_epoch"] > 0


def test_a_failed_checkpoint_write_leaves_the_previous_file(tmp_path: Path) -> None:
    """The write is atomic: an error half-way (here: an object that cannot be pickled,
    after the first bytes are out) leaves the previous checkpoint whole and loadable."""
    path = tmp_path / "last.ckpt"

    class Trainer:  # what _save_atomically reads of the trainer
        is_global_zero = True

    EarlyStoppingCheckpoint._save_atomically(Trainer(), {"epoch": 1, "w": torch.ones(3)}, str(path))
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises
        EarlyStoppingCheckpoint._save_atomically(
            Trainer(), {"epoch": 2, "w": torch.ones(10_000), "bad": lambda: None}, str(path)
        )
    assert torch.load(path, weights_only=False)["epoch"] == 1


def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path: Path) -> None:
    proc = start_train(f"hydra.run.dir={tmp_path / 'run'}", "trainer=cpu")
    time.sleep(0.5)  # the libraries are still loading
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["Interrupted (SIGINT): nothing was started"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_the_before_pictures_marks_the_run_interrupted(
    tmp_path: Path, cache_dir, sig, code
) -> None:
    sweep = tmp_path / "runs"
    run = sweep / "0"
    proc = start_train(
        f"hydra.run.dir={run}", f"paths.cache_dir={cache_dir}", "trainer=cpu",
        "print_config=false", "model=gat", "data=cora", "callbacks=[dataset_report,tsne]",
        "callbacks.tsne.max_iter=2000",  # a long "before" t-SNE: the signal lands inside
    )  # fmt: skip
    _wait_for(run / "dataset.json", proc)  # set-up done; the "before" t-SNE is running
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Interrupted ({signal.Signals(sig).name})")
    assert "Traceback" not in stderr
    record = json.loads((run / "interrupted.json").read_text())
    assert record["signal"] == signal.Signals(sig).name and record["resume"] is None, record
    summary = aggregate(sweep)  # listed as interrupted, not failed
    assert summary["rows"][0]["interrupted"] == 1 and summary["rows"][0]["failed"] == 0


@pytest.mark.slow
def test_ckpt_path_auto_resumes_the_unfinished_run(tmp_path: Path, cache_dir) -> None:
    logs = tmp_path / "outputs"
    args = ["trainer=cpu", "print_config=false", "callbacks=none", "model=gcn", "data=cora",
            "trainer.max_epochs=150", "checkpoint.every_n_epochs=5",
            f"paths.cache_dir={cache_dir}", f"paths.log_dir={logs}"]  # fmt: skip
    proc = start_train(*args)
    deadline = time.time() + 180
    while not list(logs.glob("*/*/checkpoints/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # graceful: last.ckpt of the stopping epoch
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    (run_dir,) = [p.parent.parent for p in logs.glob("*/*/checkpoints/last.ckpt")]
    cli = run_entry("train.py", *args, "ckpt_path=auto")
    assert f"ckpt_path=auto: resuming {run_dir}" in cli.stdout
    assert read_metrics(run_dir)["epochs"] > 5
    assert not (run_dir / "interrupted.json").exists()
    # nothing unfinished is left: the same command starts a new run
    cli = run_entry("train.py", *args, "ckpt_path=auto")
    assert "starting a new one" in cli.stdout
    assert len(list(logs.glob("*/*/metrics.json"))) == 2


def _submitit_task(sweep: Path) -> int | None:
    """The pid of the submitit task process running a job of ``sweep``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and str(sweep) in cmd:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_preempted_submitit_job_requeues_and_resumes(tmp_path: Path, cache_dir) -> None:
    """hydra/launcher=local (submitit's local executor): the preemption signal submitit
    uses (SIGUSR2) → the job finishes its epoch, writes last.ckpt and is requeued by
    submitit; the requeued job resumes from it in the same job dir."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local",
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache_dir}", "trainer=cpu",
         "callbacks=none", "model=gcn", "data=cora", "seed=0", "trainer.max_epochs=400",
         "early_stopping.patience=0", "checkpoint.every_n_epochs=20"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    job = sweep / "0"
    _wait_for(job / "checkpoints" / "last.ckpt", proc)  # training is under way
    pid = _submitit_task(sweep)
    assert pid is not None
    os.kill(pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    metrics = read_metrics(job)
    assert metrics["epochs"] == 400
    first, second = metrics["parts"]  # the preempted part and the requeued one
    assert second["first_epoch"] == first["last_epoch"] + 1 and second["last_epoch"] == 399
    assert not (job / "interrupted.json").exists()
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*.out"))
    assert "requeued job: resuming from" in logs


def test_a_truncated_last_ckpt_is_one_error_line_naming_it(tmp_path: Path, cache_dir) -> None:
    run = tmp_path / "run"
    run_entry("train.py", *COMMON[:6], "trainer.max_epochs=3", f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={run}")  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as a full disk would
    proc = run_entry("train.py", *COMMON[:6], f"paths.cache_dir={cache_dir}",
                   f"ckpt_path={last}", check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read checkpoint {last}")
