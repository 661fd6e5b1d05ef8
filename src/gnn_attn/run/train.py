"""One training run: build from the config, fit, select on validation, test."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from gnn_attn.analysis.jobs import INTERRUPTED_FILE
from gnn_attn.callbacks.signals import preemption_signal
from gnn_attn.config import project_root
from gnn_attn.console import header, quiet
from gnn_attn.errors import Interrupted, TrainingDiverged, UserError
from gnn_attn.loggers import RunLogger, new_run_id
from gnn_attn.models import NodeClassifier, count_parameters
from gnn_attn.run.build import (
    build_callbacks,
    build_data_and_model,
    build_loggers,
    build_node,
    check_ddp_loader,
    read_checkpoint,
)
from gnn_attn.run.continuation import (
    continue_command,
    remove_stack_checkpoints,
    resume_in_sweep,
)
from gnn_attn.run.distributed import ddp_group, is_worker, world_size
from gnn_attn.run.sweep import is_multirun


def resume_command(ckpt: str) -> str:
    """The command that continues this run from ``ckpt``: the interpreter that is
    running, ``train.py`` and the run's own overrides."""
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    script = Path(project_root()) / "train.py"
    return shlex.join([sys.executable, str(script), *overrides, f"ckpt_path={ckpt}"])


def mark_interrupted(err: Interrupted, phase: str, out_dir: Path) -> Interrupted:
    """Write ``interrupted.json`` into the run dir (the aggregator lists the run as
    interrupted) and return ``err`` with the message of what was saved."""
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and is_multirun():  # the sweep continues, this job from last.ckpt
        command = continue_command(HydraConfig.get().sweep.dir)
        message = f"during {phase}; last.ckpt saved. Continue the sweep with:\n  {command}"
    elif last.is_file():
        command = resume_command(str(last))
        message = f"during {phase}; last.ckpt saved. Resume with:\n  {command}"
    else:
        command = None
        message = f"during {phase}; no checkpoint yet (nothing to resume): start it again"
    write_json(
        out_dir / INTERRUPTED_FILE,
        {"signal": err.signal_name, "phase": phase, "resume": command},
    )
    return Interrupted(err.signum, message)


class Resume(NamedTuple):
    """The checkpoint a run resumes from: its path, stored config and epoch."""

    path: str
    config: DictConfig
    epoch: int


def check_resume(cfg: DictConfig) -> Resume | None:
    """``cfg.ckpt_path`` (a ``last.ckpt``, or a run dir meaning its ``last.ckpt``) if
    set, read once, after checking it belongs to this model and dataset (a checkpoint
    written by train.py stores its config)."""
    path = cfg.get("ckpt_path")
    if not path:
        return None
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():  # a run dir
        resolved = resolved / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(resolved)
    if "optimizer_states" not in ckpt:
        raise UserError(
            f"ckpt_path {path} holds weights only (a stacked member's best.ckpt): training "
            "cannot resume from it; evaluate it with eval.py or train anew"
        )
    stored = OmegaConf.create(ckpt["hyper_parameters"]["run_config"])
    for key in ("model", "data"):
        theirs, ours = stored[key].get("name"), cfg[key].get("name")
        if theirs != ours or stored[key].get("_target_") != cfg[key].get("_target_"):
            raise UserError(
                f"ckpt_path {path} is a {theirs} ({stored[key].get('_target_')}) checkpoint "
                f"but {key}={ours} ({cfg[key].get('_target_')}); pass {key}={theirs} or "
                "another checkpoint"
            )
    return Resume(str(resolved), stored, int(ckpt["epoch"]))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def train(cfg: DictConfig) -> float:
    """The task of ``train.py``: :func:`run`, returning ``cfg.optimized_metric``."""
    return optimized_value(cfg, run(cfg))


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """``metrics[cfg.optimized_metric]``, what a sweeper optimises (a validation metric)."""
    key = cfg.get("optimized_metric") or "val/acc_best"
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
        phase = Phase()
        try:
            return _run(cfg, out_dir, started, phase)
        except TrainingDiverged as err:
            if not is_worker():  # DDP: rank 0 writes
                write_json(out_dir / "metrics.json", {"status": "failed", "error": str(err)})
            raise
        except Interrupted as err:
            if is_worker():
                raise
            raise mark_interrupted(err, phase.now, out_dir) from None


class Phase:
    """What the run is doing, for the line an interrupt prints."""

    now = "set-up (data, model)"


def _run(cfg: DictConfig, out_dir: Path, started: float, phase: Phase) -> dict[str, Any]:
    resume_unfinished_job(cfg, out_dir)
    resume = check_resume(cfg)
    keep_wandb_run(cfg, resume)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule, module = build_data_and_model(cfg, "fit", run_config)
    selection, periodic, stop, timer, callbacks = build_callbacks(cfg)
    history = csv_history(out_dir, resume)
    loggers = build_loggers(cfg)
    restore_csv_history(loggers, history)
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
    phase.now = "training (or the pictures before it)"
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path if resume else None)
    if stop.preempted:  # last.ckpt is written: submitit requeues, the job resumes
        write_json(
            out_dir / INTERRUPTED_FILE,
            {"signal": signal.Signals(stop.received).name, "phase": "training",
             "resume": "requeued by submitit: the job resumes from last.ckpt"},
        )  # fmt: skip
        stop.hand_over()
    if stop.received is not None:
        raise Interrupted(stop.received)
    phase.now = "selection and test (training had finished)"
    parts = [dict(p) for p in periodic.parts]  # before test loads best.ckpt's callback state
    fit_seconds = timer.time_elapsed("train")  # the epoch loop: train steps + validation
    epochs = trainer.current_epoch
    if selection.best_epoch < 0:
        raise UserError(
            "training ran no validation epoch; set trainer.max_epochs ≥ 1 (and "
            "trainer.max_steps, if set, to at least one epoch's batches)"
        )

    best = selection.best_model_path
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0]
    fit = fit_of_selected(module, datamodule)  # the module now holds best.ckpt's weights
    metrics = {
        "dataset": datamodule.name,
        "model": run_config["model"].get("name") or type(module.net).__name__.lower(),
        "seed": cfg.seed,
        "test/acc": float(test["test/acc"]),
        "test/loss": float(test["test/loss"]),
        **module.test_summary(datamodule.class_names),
        **fit,
        "val/acc": float(val["val/acc"]),
        "val/loss": float(val["val/loss"]),
        "val/acc_best": float(module.val_acc_best),
        "best_epoch": selection.best_epoch,
        "epochs": epochs,
        "fit_seconds": round(fit_seconds, 4),
        "ms_per_epoch": round(1000 * fit_seconds / max(epochs, 1), 3),
        **({"parts": parts} if len(parts) > 1 else {}),
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
    publish(metrics, loggers, out_dir)
    return metrics


def fit_of_selected(module: NodeClassifier, datamodule: Any) -> dict[str, float]:
    """``train/acc`` and ``train/loss`` of the module's weights in eval mode (no
    dropout): how well the selected checkpoint fits its training nodes. Empty for a data
    module without ``eval_dataloader``."""
    batches = getattr(datamodule, "eval_dataloader", None)
    if batches is None:
        return {}
    move = datamodule.transfer_batch_to_device
    # inference mode, as validate/test: a sampler they built holds inference tensors
    with torch.inference_mode():
        return module.score((move(b, module.device, 0) for b in batches("train")), "train")


def publish(metrics: dict[str, Any], loggers: list, out_dir: Path) -> None:
    """A finished run's ``metrics.json``, its W&B summary and checkpoint artifact, and
    its result line."""
    public = {k: v for k, v in metrics.items() if k != "output_dir"}
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update(public)
        if isinstance(lg, RunLogger):
            lg.log_checkpoint(metrics["checkpoint"], public)
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / INTERRUPTED_FILE).unlink(missing_ok=True)  # a resumed run finished
    remove_stack_checkpoints(out_dir)  # a stack's member (or a job once one) finished
    print(
        f"{metrics['model']} on {metrics['dataset']} (seed {metrics['seed']}): "
        f"test/acc {metrics['test/acc']:.4f} | val/acc {metrics['val/acc']:.4f} "
        f"(best epoch {metrics['best_epoch']} of {metrics['epochs']}) | "
        f"{metrics['ms_per_epoch']:.1f} ms/epoch | {out_dir}"
    )


def resume_unfinished_job(cfg: DictConfig, out_dir: Path) -> None:
    """A job that runs again in its own dir — a continued sweep's
    (:mod:`gnn_attn.run.continuation`), a requeued submitit job's — resumes from the
    ``last.ckpt`` it wrote, unless it had finished."""
    requeued = preemption_signal() is not None
    if requeued or is_multirun():
        resume_in_sweep(cfg, out_dir, requeued)


def keep_wandb_run(cfg: DictConfig, resume: Resume | None) -> None:
    """Give the W&B run its id now, so that the checkpoints store it: a resumed run
    continues the W&B run of its checkpoint (``resume="allow"``)."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None:
        return
    stored = OmegaConf.select(resume.config, "logger.wandb.id") if resume else None
    with open_dict(cfg):
        wandb_cfg.id = stored or wandb_cfg.get("id") or new_run_id()


def csv_history(out_dir: Path, resume: Resume | None) -> tuple[list[str], list[dict]] | None:
    """Resuming in the run's own dir: the header and rows of its ``csv/metrics.csv`` up
    to the checkpoint's epoch (rows logged after it are trained again)."""
    path = out_dir / "csv" / "metrics.csv"
    if resume is None or not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("epoch") and int(float(r["epoch"])) <= resume.epoch]
        return list(reader.fieldnames or []), rows


def restore_csv_history(loggers: list, history: tuple[list[str], list[dict]] | None) -> None:
    """Put the kept rows back under the new CSV logger (Lightning's CSV writer deletes
    an existing ``metrics.csv`` when it starts), so each epoch appears once."""
    if history is None:
        return
    header, rows = history
    for lg in loggers:
        if isinstance(lg, CSVLogger):
            with warnings.catch_warnings():  # "... will be deleted": they are put back here
                warnings.simplefilter("ignore")
                writer = lg.experiment
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=header)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = list(header)
