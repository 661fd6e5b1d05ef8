"""One training run: instantiate from the config, fit, select on validation, test."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.console import print_config, quiet
from gnn_attn.errors import UserError
from gnn_attn.models import count_parameters
from gnn_attn.sweep import is_multirun, record_failure
from gnn_attn.validate import check_config


def _hydra_job() -> tuple[str | None, str | None]:
    """(run name from the overrides, sweep dir when multirun) — (None, None) outside Hydra."""
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    name = hc.job.override_dirname or hc.job.name
    return name, (hc.sweep.dir if is_multirun() else None)


def build_loggers(cfg: DictConfig) -> list[Logger]:
    name, group = _hydra_job()
    loggers: list[Logger] = []
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        if key == "wandb":
            with open_dict(lg_cfg):
                lg_cfg.name = lg_cfg.name or name
                lg_cfg.group = lg_cfg.group or group
        loggers.append(instantiate(lg_cfg))
    return loggers


def build_callbacks(cfg: DictConfig) -> tuple[EarlyStoppingCheckpoint, list[L.Callback]]:
    selection = instantiate(cfg.early_stopping)
    callbacks = [selection]
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.get("enable_progress_bar", True) and cfg.get("progress_bar"):
        callbacks.append(instantiate(cfg.progress_bar))
    return selection, callbacks


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best-validation checkpoint, test it; return and write the metrics.

    Writes ``<paths.output_dir>/metrics.json`` and ``checkpoints/{best,last}.ckpt``.
    """
    started = time.perf_counter()
    quiet()
    check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("print_config"):
        print_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data.module)
    datamodule.setup("fit")
    module = instantiate(
        cfg.model.module, in_channels=datamodule.num_features, num_classes=datamodule.num_classes
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    selection, callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(module.run_config)

    trainer.fit(module, datamodule=datamodule)
    fit_seconds = module.train_seconds  # the epoch loop: train steps + validation
    epochs = trainer.current_epoch
    if selection.best_epoch < 0:
        raise UserError("training ran no validation epoch; set trainer.max_epochs ≥ 1")

    best = selection.best_model_path
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    metrics = {
        "dataset": datamodule.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "test/acc": float(test["test/acc"]),
        "test/loss": float(test["test/loss"]),
        "val/acc": float(val["val/acc"]),
        "val/loss": float(val["val/loss"]),
        "val/acc_best": float(module.val_acc_best),
        "best_epoch": selection.best_epoch,
        "epochs": epochs,
        "fit_seconds": round(fit_seconds, 3),
        "ms_per_epoch": round(1000 * fit_seconds / max(epochs, 1), 3),
        "num_params": count_parameters(module.net),
        "checkpoint": best,
        "output_dir": str(out_dir),
    }
    for cb in callbacks:  # numbers the analysis callbacks computed (silhouette, ...)
        metrics.update(getattr(cb, "summary", None) or {})
    # everything this job spent outside the epoch loop: setup, selection, test, pictures
    metrics["run_seconds"] = round(time.perf_counter() - started, 3)
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({k: v for k, v in metrics.items() if k != "output_dir"})
    write_json(out_dir / "metrics.json", metrics)
    print(
        f"{metrics['model']} on {metrics['dataset']} (seed {cfg.seed}): "
        f"test/acc {metrics['test/acc']:.4f} | val/acc {metrics['val/acc']:.4f} "
        f"(best epoch {selection.best_epoch} of {epochs}) | "
        f"{metrics['ms_per_epoch']:.1f} ms/epoch | {out_dir}"
    )
    return metrics


def finish_wandb() -> None:
    """Close the W&B run of this job, if any (Hydra multirun would merge runs otherwise)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def threads_per_job(cfg: DictConfig) -> int | None:
    """``cfg.threads`` if set; under the joblib launcher, cores // parallel jobs (so that
    jobs × threads ≤ cores); else None (torch's default)."""
    if cfg.get("threads"):
        return int(cfg.threads)
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or -1
    n_jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, cores // max(1, min(n_jobs, cores)))


def main(cfg: DictConfig) -> float | None:
    """Entry point for ``train.py``; returns ``cfg.optimized_metric`` (for sweepers).

    A single run turns a :class:`UserError` into one ``Error:`` line and exit status 2.
    In a multirun, any failure is recorded in the job's ``error.json`` and the sweep goes
    on (:class:`gnn_attn.sweep.SweepStatus` makes its exit status say so at the end).
    """
    threads = threads_per_job(cfg)
    if threads:
        torch.set_num_threads(threads)
    try:
        return run(cfg)[cfg.get("optimized_metric") or "val/acc_best"]
    except Exception as err:
        if is_multirun() and os.environ.get("HYDRA_FULL_ERROR") != "1":
            record_failure(cfg.paths.output_dir, err)
            print(f"Error in job {cfg.paths.output_dir}: {err}", file=sys.stderr)
            return float("nan")
        if isinstance(err, UserError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            print(f"Error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        raise
    finally:
        finish_wandb()
