"""Shared fixtures: the repo, W&B offline in temp dirs, and the real CLI: in this process
(:func:`run_entry`) or, where the command line itself is under test, as a subprocess
(:func:`run_cli`)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def wandb_env(base: Path) -> dict[str, str]:
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        path = base / var.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    return env


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    base = tmp_path_factory.mktemp("wandb_env")
    for key, value in wandb_env(base).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker per core), each worker and the
    processes it starts get ``cores // workers`` threads: more threads than cores make
    OpenMP's waiting threads spin against each other (10–30× slower)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One processed-data cache for the whole session, outside the source tree."""
    return tmp_path_factory.mktemp("cache")


def run_cli(
    script: str,
    *overrides: str,
    cwd: Path | None = None,
    check: bool = True,
    timeout: int = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python <script> <overrides>`` from the repo (the real Hydra CLI)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(overrides)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def run_entry(
    script: str,
    *overrides: str,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``python <script> <overrides>`` run in this process: the script's own entry
    function (:func:`gnn_attn.run.entry.main` with its task, Hydra's real command line),
    without the 5–6 s of a fresh interpreter's imports. What it prints is captured at the
    file-descriptor level (worker processes included) and its ``SystemExit`` is the
    return code, as :func:`run_cli` reports a subprocess; the process state it touches
    (argv, environment, signal handlers, torch threads, working dir) is restored."""
    import logging

    import torch
    from hydra.core.global_hydra import GlobalHydra

    from gnn_attn.run import entry
    from gnn_attn.run.evaluate import evaluate
    from gnn_attn.run.train import train

    task, config_name = {"train.py": (train, "train"), "eval.py": (evaluate, "eval")}[script]
    saved = {
        "argv": sys.argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "threads": torch.get_num_threads(),
        "signals": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
        "streams": (sys.stdout, sys.stderr),
        "logging": (logging.root.handlers[:], logging.root.level),  # Hydra's job logging
    }
    files = [tempfile.TemporaryFile() for _ in range(2)]  # noqa: SIM115 (closed below)
    sys.stdout.flush()
    sys.stderr.flush()
    fds = [os.dup(1), os.dup(2)]
    code = 0
    try:
        for fd, f in zip((1, 2), files, strict=True):
            os.dup2(f.fileno(), fd)
        sys.stdout, sys.stderr = (
            io.TextIOWrapper(os.fdopen(os.dup(fd), "wb"), write_through=True) for fd in (1, 2)
        )
        os.environ.update({"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"})
        os.environ.pop("PYTEST_CURRENT_TEST", None)
        os.chdir(cwd or ROOT)
        sys.argv = [str(ROOT / script), *overrides]
        GlobalHydra.instance().clear()
        with warnings.catch_warnings():  # printed to its stderr, as a fresh process would
            warnings.simplefilter("always")
            for category in (DeprecationWarning, PendingDeprecationWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)  # as Python's default filters
            warnings.showwarning = _print_warning
            try:
                entry.main(task, config_name)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.root.handlers[:], level = saved["logging"]
        logging.root.setLevel(level)
        for stream in (sys.stdout, sys.stderr):
            stream.close()
        for fd, old in zip((1, 2), fds, strict=True):
            os.dup2(old, fd)
            os.close(old)
        sys.stdout, sys.stderr = saved["streams"]
        GlobalHydra.instance().clear()
        sys.argv = saved["argv"]
        os.environ.clear()
        os.environ.update(saved["env"])
        os.chdir(saved["cwd"])
        torch.set_num_threads(saved["threads"])
        for sig, handler in saved["signals"].items():
            signal.signal(sig, handler)
    texts = []
    for f in files:
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
        f.close()
    out, err = texts
    proc = subprocess.CompletedProcess([script, *overrides], code, out, err)
    if check and code != 0:
        raise AssertionError(
            f"{script} {' '.join(overrides)} exited {code}\n"
            f"--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}"
        )
    return proc


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def start_train(*overrides: str, new_session: bool = False) -> subprocess.Popen:
    """Start ``python train.py <overrides>`` (the real CLI) without waiting, to signal it
    (``new_session``: in a process group of its own, its workers too, to kill as a node
    failure would)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def train_overrides(out_dir: Path, cache: Path, *extra: str) -> list[str]:
    """A quiet CPU run writing into ``out_dir``."""
    return [
        f"hydra.run.dir={out_dir}",
        f"paths.cache_dir={cache}",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "print_config=false",
        "callbacks=none",
        *extra,
    ]


def sweep_overrides(sweep_dir: Path, cache: Path, trainer: str = "cpu") -> list[str]:
    """``-m`` into ``sweep_dir``, quiet, no pictures, no logger."""
    return [
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.cache_dir={cache}",
        f"trainer={trainer}",
        "trainer.enable_progress_bar=false",
        "print_config=false",
        "callbacks=none",
        "logger=none",
    ]


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
