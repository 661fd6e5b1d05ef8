"""The jobs of a sweep directory: their overrides, metrics, errors and saved config."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

ERROR_FILE = "error.json"
METRICS_FILE = "metrics.json"
INTERRUPTED_FILE = "interrupted.json"  # a run stopped by SIGINT/SIGTERM (what was saved)


@dataclass
class Job:
    """One job directory of a sweep: its overrides and, if it finished, its metrics.

    ``order`` is the model config's ``order`` (its row in result tables), read from the
    job's saved config (``.hydra/config.yaml``); 100 where it has none."""

    path: Path
    overrides: list[str]
    metrics: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    order: int = 100
    interrupted: dict[str, Any] | None = None
    status: str = field(init=False)

    def __post_init__(self) -> None:
        if self.metrics and self.metrics.get("status") == "failed":
            self.error = self.error or {"error": self.metrics.get("error", "failed")}
            self.metrics = None
        self.status = (
            "ok" if self.metrics
            else "failed" if self.error
            else "interrupted" if self.interrupted
            else "unfinished"
        )  # fmt: skip


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job under ``sweep_dir`` (a directory holding ``.hydra/overrides.yaml``)."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("**/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        jobs.append(
            Job(
                job_dir,
                [str(o) for o in overrides],
                _read_json(job_dir / METRICS_FILE),
                _read_json(job_dir / ERROR_FILE),
                _model_order(overrides_file.parent / "config.yaml"),
                _read_json(job_dir / INTERRUPTED_FILE),
            )
        )
    return sorted(jobs, key=lambda j: _job_key(j.path))


def _model_order(config_file: Path) -> int:
    try:
        model = (yaml.safe_load(config_file.read_text()) or {}).get("model") or {}
    except (OSError, yaml.YAMLError):
        return 100
    order = model.get("order", 100)
    return order if isinstance(order, int) else 100


def _job_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.parts)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def split_override(override: str) -> tuple[str, str]:
    """``key=value`` (with a leading ``+``/``~``) as ``(key, value)``."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    r"""The ``level`` confidence interval of the mean, Student's :math:`t` over the
    :math:`n` values: :math:`\bar{x} \pm t_{(1+level)/2,\,n-1}\, s/\sqrt{n}` (NaN for
    fewer than two values)."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, std = mean_std(values)
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean - half, mean + half
