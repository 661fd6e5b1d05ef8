"""Multirun bookkeeping: failed jobs leave a record, and the sweep's exit status tells."""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gnn_attn.analysis.aggregate import aggregate
from gnn_attn.analysis.jobs import ERROR_FILE, find_jobs
from gnn_attn.loggers import log_sweep_summary


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


def _summary_run(wandb_cfg: DictConfig, sweep_dir: str, rows: list[dict[str, Any]]) -> None:
    """The sweep's table and plot as a ``sweep-summary`` W&B run of the sweep's group;
    a W&B failure is one warning (the table is already written)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    try:
        offline_dir = log_sweep_summary(
            project=wandb_cfg.project,
            entity=wandb_cfg.get("entity"),
            mode=wandb_cfg.get("mode", "auto"),
            sweep_dir=sweep_dir,
            table=(columns, [[r.get(c) for c in columns] for r in rows]),
            images={"results_plot": Path(sweep_dir) / "results.png"},
        )
    except Exception as err:
        warnings.warn(f"W&B sweep summary not logged ({type(err).__name__}: {err})", stacklevel=1)
        return
    if offline_dir is not None:
        print(f"W&B offline: sweep summary run; upload later with `wandb sync {offline_dir}`")


class SweepStatus(Callback):
    """Hydra callback: when a multirun ends (any launcher), its jobs are aggregated as
    ``make table`` does — the table printed and written into the sweep dir
    (``results.{md,csv,png}``; with ``logger=wandb`` also a ``sweep-summary`` W&B run
    in the sweep's group) — then failed jobs are listed with their reason and the
    exit status is 1 if any failed (the other jobs still ran to completion)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        jobs = find_jobs(sweep_dir)
        failed = [j for j in jobs if j.status != "ok"]
        listed = False
        if len(failed) < len(jobs):
            print()
            result = aggregate(sweep_dir)  # prints the table and the failures
            listed = bool(result["problems"])
            wandb_cfg = (config.get("logger") or {}).get("wandb")
            if wandb_cfg is not None:
                _summary_run(wandb_cfg, sweep_dir, result["rows"])
        print(f"sweep: {len(jobs) - len(failed)} of {len(jobs)} jobs finished in {sweep_dir}")
        if failed:
            for j in [] if listed else failed:
                why = (j.error or {}).get("error", "no metrics.json")
                print(
                    f"  {j.status}: {j.path.name} ({' '.join(j.overrides)}): {why}", file=sys.stderr
                )
            sys.exit(1)
