"""Multirun bookkeeping: failed jobs leave a record, and the sweep's exit status tells."""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ERROR_FILE = "error.json"
METRICS_FILE = "metrics.json"


def is_multirun() -> bool:
    return HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def record_failure(out_dir: str | Path, err: BaseException) -> None:
    """Write ``error.json`` (type, message, traceback) into a failed job's directory."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    payload = {
        "type": type(err).__name__,
        "error": str(err),
        "traceback": "".join(traceback.format_exception(err)),
    }
    (path / ERROR_FILE).write_text(json.dumps(payload, indent=2) + "\n")


@dataclass
class Job:
    """One job directory of a sweep: its overrides and, if it finished, its metrics."""

    path: Path
    overrides: list[str]
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    status: str = field(init=False)

    def __post_init__(self) -> None:
        if self.metrics and self.metrics.get("status") == "failed":
            self.error = self.error or {"error": self.metrics.get("error", "failed")}
            self.metrics = None
        self.status = "ok" if self.metrics else "failed" if self.error else "unfinished"


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job under ``sweep_dir`` (a directory holding ``.hydra/overrides.yaml``)."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("**/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        metrics = _read_json(job_dir / METRICS_FILE)
        error = _read_json(job_dir / ERROR_FILE)
        jobs.append(Job(job_dir, [str(o) for o in overrides], metrics, error))
    return sorted(jobs, key=lambda j: _job_key(j.path))


def _job_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.parts)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class SweepStatus(Callback):
    """Hydra callback: at the end of a multirun, list failed jobs and exit with status 1
    if any failed (the other jobs still ran to completion)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = find_jobs(config.hydra.sweep.dir)
        failed = [j for j in jobs if j.status != "ok"]
        ok = len(jobs) - len(failed)
        print(f"sweep: {ok} of {len(jobs)} jobs finished in {config.hydra.sweep.dir}")
        if failed:
            for j in failed:
                why = (j.error or {}).get("error", "no metrics.json")
                print(
                    f"  {j.status}: {j.path.name} ({' '.join(j.overrides)}): {why}", file=sys.stderr
                )
            sys.exit(1)
