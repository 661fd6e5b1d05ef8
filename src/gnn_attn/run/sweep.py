"""Multirun bookkeeping: failed jobs leave a record, and the sweep's exit status tells."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gnn_attn.analysis.aggregate import aggregate
from gnn_attn.analysis.jobs import ERROR_FILE, find_jobs


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


class SweepStatus(Callback):
    """Hydra callback: when a multirun ends (any launcher), its jobs are aggregated as
    ``make table`` does — the table printed and written into the sweep dir
    (``results.{md,csv,png}``) — then failed jobs are listed with their reason and the
    exit status is 1 if any failed (the other jobs still ran to completion)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        jobs = find_jobs(sweep_dir)
        failed = [j for j in jobs if j.status != "ok"]
        listed = False
        if len(failed) < len(jobs):
            print()
            listed = bool(aggregate(sweep_dir)["problems"])  # prints the table and failures
        print(f"sweep: {len(jobs) - len(failed)} of {len(jobs)} jobs finished in {sweep_dir}")
        if failed:
            for j in [] if listed else failed:
                why = (j.error or {}).get("error", "no metrics.json")
                print(
                    f"  {j.status}: {j.path.name} ({' '.join(j.overrides)}): {why}", file=sys.stderr
                )
            sys.exit(1)
