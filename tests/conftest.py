"""Shared fixtures: the repo, W&B offline in temp dirs, and the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def start_train(*overrides: str) -> subprocess.Popen:
    """Start ``python train.py <overrides>`` (the real CLI) without waiting, to signal it."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
