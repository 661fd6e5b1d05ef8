"""One training run: instantiate from the config, fit, select on validation, test."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.callbacks.signals import StopOnSignal
from gnn_attn.console import print_config, quiet
from gnn_attn.distributed import ddp_group, world_size
from gnn_attn.errors import (
    TrainingDiverged,
    UserError,
    is_out_of_memory,
    out_of_memory_error,
    user_error_in,
)
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
    """The configured loggers. W&B is started here: if it fails for any reason, one
    warning, and the run goes on with the CSV logger instead."""
    name, group = _hydra_job()
    loggers: list[Logger] = []
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        if key != "wandb":
            loggers.append(instantiate(lg_cfg))
            continue
        with open_dict(lg_cfg):
            lg_cfg.name = lg_cfg.name or name
            lg_cfg.group = lg_cfg.group or group
        try:
            wandb_logger = instantiate(lg_cfg)
            _ = wandb_logger.experiment  # starts the run now, not mid-training
            loggers.append(wandb_logger)
        except Exception as err:
            warnings.warn(
                f"W&B could not start ({type(err).__name__}: {err}); logging to "
                f"CSV in {cfg.paths.output_dir}/csv instead",
                stacklevel=2,
            )
            if not any(isinstance(lg, CSVLogger) for lg in loggers):
                loggers.append(CSVLogger(cfg.paths.output_dir, name="csv", version=""))
    return loggers


def build_callbacks(cfg: DictConfig) -> tuple[EarlyStoppingCheckpoint, list[L.Callback]]:
    selection = instantiate(cfg.early_stopping)
    callbacks = [selection, StopOnSignal()]
    callbacks += [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.get("enable_progress_bar", True) and cfg.get("progress_bar"):
        callbacks.append(instantiate(cfg.progress_bar))
    return selection, callbacks


class Interrupted(Exception):
    """SIGINT/SIGTERM during training: ``last.ckpt`` is saved; exit 128 + signal."""

    def __init__(self, signum: int, last: str) -> None:
        self.signum, self.last = signum, last
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def check_resume(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` if set, after checking it exists and belongs to this model and
    dataset (a checkpoint written by train.py stores its config)."""
    path = cfg.get("ckpt_path")
    if not path:
        return None
    from gnn_attn.evaluate import load_run_config

    stored = load_run_config(Path(path).expanduser().resolve())
    for key in ("model", "data"):
        if stored[key]["name"] != cfg[key]["name"]:
            raise UserError(
                f"ckpt_path {path} is a {stored[key]['name']} checkpoint but {key}="
                f"{cfg[key]['name']}; pass {key}={stored[key]['name']} or another checkpoint"
            )
    return str(Path(path).expanduser().resolve())


def resume_command(last: str) -> str:
    """The command that resumes this run from ``last``."""
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    return " ".join(["python train.py", *overrides, f"ckpt_path={last}"])


def build_data_and_model(cfg: DictConfig, stage: str) -> tuple[Any, L.LightningModule]:
    """The data module (set up for ``stage``) and the model sized to its graph."""
    datamodule = instantiate(cfg.data.module)
    datamodule.setup(stage)
    module = instantiate(
        cfg.model.module, in_channels=datamodule.num_features, num_classes=datamodule.num_classes
    )
    return datamodule, module


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

    with ddp_group(cfg) as world:
        if world > 1 and cfg.trainer.get("accelerator") == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        return _run(cfg, out_dir, started)


def _run(cfg: DictConfig, out_dir: Path, started: float) -> dict[str, Any]:
    datamodule, module = build_data_and_model(cfg, "fit")
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    selection, callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(module.run_config)

    stop = next(cb for cb in callbacks if isinstance(cb, StopOnSignal))
    trainer.fit(module, datamodule=datamodule, ckpt_path=check_resume(cfg))
    if stop.received is not None:
        raise Interrupted(stop.received, selection.last_model_path)
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
        "fit_seconds": round(fit_seconds, 4),
        "ms_per_epoch": round(1000 * fit_seconds / max(epochs, 1), 3),
        "num_params": count_parameters(module.net),
        "checkpoint": best,
        "output_dir": str(out_dir),
    }
    for cb in callbacks:  # numbers the analysis callbacks computed (silhouette, ...)
        metrics.update(getattr(cb, "summary", None) or {})
    # everything this job spent outside the epoch loop: setup, selection, test, pictures
    metrics["run_seconds"] = round(time.perf_counter() - started, 3)
    if world_size(cfg) > 1:
        metrics["processes"] = trainer.world_size
    if not trainer.is_global_zero:
        return metrics  # DDP: rank 0 writes and reports
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
    jobs × threads ≤ cores); under submitit, the launcher's ``cpus_per_task``; else None
    (torch's default)."""
    if cfg.get("threads"):
        return int(cfg.threads)
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", "")).lower()
    if "submitit" in target:
        return launcher.get("cpus_per_task")
    if "joblib" not in target:
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
        try:
            return run(cfg)[cfg.get("optimized_metric") or "val/acc_best"]
        except Exception as err:
            if is_out_of_memory(err):
                raise out_of_memory_error(err, cfg.data.get("loader", "full")) from err
            user = user_error_in(err)  # e.g. raised in a constructor Hydra instantiated
            if user is not None and user is not err:
                raise user from err
            raise
    except Interrupted as stop:
        print(
            f"Interrupted: last.ckpt saved. Resume with:\n  {resume_command(stop.last)}",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)
    except Exception as err:
        if isinstance(err, TrainingDiverged):
            write_json(
                Path(cfg.paths.output_dir) / "metrics.json", {"status": "failed", "error": str(err)}
            )
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
