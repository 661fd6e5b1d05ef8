"""One training run: build from the config, fit, select on validation, test."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from gnn_attn.console import header, quiet
from gnn_attn.errors import TrainingDiverged, UserError
from gnn_attn.loggers import RunLogger
from gnn_attn.models import count_parameters
from gnn_attn.run.build import (
    build_callbacks,
    build_data_and_model,
    build_loggers,
    build_node,
    check_ddp_loader,
    load_run_config,
)
from gnn_attn.run.distributed import ddp_group, is_worker, world_size
from gnn_attn.run.sweep import is_multirun


class Interrupted(Exception):
    """SIGINT/SIGTERM during training: ``last.ckpt`` is saved; exit 128 + signal."""

    def __init__(self, signum: int, last: str) -> None:
        self.signum, self.last = signum, last
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    def resume_command(self) -> str:
        """The command that resumes this run from ``last.ckpt``."""
        overrides = []
        if HydraConfig.initialized():
            overrides = [
                o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")
            ]
        return " ".join(["python train.py", *overrides, f"ckpt_path={self.last}"])


def check_resume(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` if set, after checking it exists and belongs to this model and
    dataset (a checkpoint written by train.py stores its config)."""
    path = cfg.get("ckpt_path")
    if not path:
        return None
    resolved = Path(path).expanduser().resolve()
    stored = load_run_config(resolved)
    for key in ("model", "data"):
        theirs, ours = stored[key].get("name"), cfg[key].get("name")
        if theirs != ours or stored[key].get("_target_") != cfg[key].get("_target_"):
            raise UserError(
                f"ckpt_path {path} is a {theirs} ({stored[key].get('_target_')}) checkpoint "
                f"but {key}={ours} ({cfg[key].get('_target_')}); pass {key}={theirs} or "
                "another checkpoint"
            )
    return str(resolved)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig) -> float:
    """The task of ``train.py``: :func:`run`, returning ``cfg.optimized_metric``."""
    key = cfg.get("optimized_metric") or "val/acc_best"
    metrics = run(cfg)
    if key not in metrics:
        raise UserError(
            f"optimized_metric={key} is not a metric of the run; use one of "
            f"{', '.join(k for k in metrics if k.startswith('val/'))}"
        )
    return metrics[key]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, select the best-validation checkpoint, test it; return and write the metrics.

    Writes ``<paths.output_dir>/metrics.json`` and ``checkpoints/{best,last}.ckpt``.
    """
    started = time.perf_counter()
    quiet()
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not is_worker():
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        if cfg.get("print_config") and not is_multirun():  # a sweep: Hydra's job line
            print("\n".join(header(cfg, str(out_dir))), flush=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    check_ddp_loader(cfg)
    with ddp_group(cfg, run) as world:
        if world > 1 and cfg.trainer.get("accelerator") == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        try:
            return _run(cfg, out_dir, started)
        except TrainingDiverged as err:
            if not is_worker():  # DDP: rank 0 writes
                write_json(out_dir / "metrics.json", {"status": "failed", "error": str(err)})
            raise


def _run(cfg: DictConfig, out_dir: Path, started: float) -> dict[str, Any]:
    run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule, module = build_data_and_model(cfg, "fit", run_config)
    selection, stop, timer, callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    # a live bar only where one was built (a terminal); else Lightning would add its own
    live = any(isinstance(c, ProgressBar) for c in callbacks)
    trainer: L.Trainer = build_node(
        "trainer",
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=live,
    )
    for lg in loggers:
        lg.log_hyperparams(run_config)

    trainer.fit(module, datamodule=datamodule, ckpt_path=check_resume(cfg))
    if stop.received is not None:
        raise Interrupted(stop.received, selection.last_model_path)
    fit_seconds = timer.time_elapsed("train")  # the epoch loop: train steps + validation
    epochs = trainer.current_epoch
    if selection.best_epoch < 0:
        raise UserError("training ran no validation epoch; set trainer.max_epochs ≥ 1")

    best = selection.best_model_path
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    metrics = {
        "dataset": datamodule.name,
        "model": run_config["model"].get("name") or type(module.net).__name__.lower(),
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
        if isinstance(lg, RunLogger):
            lg.log_checkpoint(best, {k: v for k, v in metrics.items() if k != "output_dir"})
    write_json(out_dir / "metrics.json", metrics)
    print(
        f"{metrics['model']} on {metrics['dataset']} (seed {cfg.seed}): "
        f"test/acc {metrics['test/acc']:.4f} | val/acc {metrics['val/acc']:.4f} "
        f"(best epoch {selection.best_epoch} of {epochs}) | "
        f"{metrics['ms_per_epoch']:.1f} ms/epoch | {out_dir}"
    )
    return metrics
