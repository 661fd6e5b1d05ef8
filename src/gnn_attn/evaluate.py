"""Evaluate a saved checkpoint on the validation and test nodes (``eval.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gnn_attn.console import quiet
from gnn_attn.errors import UserError
from gnn_attn.train import build_data_and_model, write_json


def load_run_config(ckpt_path: Path) -> DictConfig:
    """The resolved training config stored in a gnn-attn checkpoint."""
    if not ckpt_path.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt_path}; pass ckpt_path=<run dir>/checkpoints/best.ckpt"
        )
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint {ckpt_path} ({type(err).__name__}); it is truncated or "
            "not a PyTorch file: pass a best.ckpt/last.ckpt written by train.py"
        ) from err
    if not isinstance(ckpt, dict) or "gnn_attn_config" not in ckpt:
        raise UserError(
            f"{ckpt_path} was not written by gnn-attn's train.py (no stored config); pass a "
            "checkpoint from <run dir>/checkpoints/"
        )
    return OmegaConf.create(ckpt["gnn_attn_config"])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild data and model from the checkpoint's config; validate and test it.

    The data paths come from the current config (``paths.*``), so a checkpoint still
    evaluates after the checkout moved. Writes ``<output_dir>/eval_metrics.json``.
    """
    quiet()
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    run_cfg = load_run_config(ckpt_path)
    module_cfg = run_cfg.data.module
    if "data_dir" in module_cfg:
        module_cfg.data_dir = cfg.paths.data_dir
    module_cfg.cache_dir = f"{cfg.paths.cache_dir}/{Path(module_cfg.cache_dir).name}"
    run_cfg.data.module.verbose = False

    datamodule, module = build_data_and_model(run_cfg, "test")
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False, callbacks=[])
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    metrics = {
        "dataset": datamodule.name,
        "model": run_cfg.model.name,
        "seed": run_cfg.seed,
        "val/acc": float(val[0]["val/acc"]),
        "val/loss": float(val[0]["val/loss"]),
        "test/acc": float(test[0]["test/acc"]),
        "test/loss": float(test[0]["test/loss"]),
        "checkpoint": str(ckpt_path),
    }
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval_metrics.json", metrics)
    print(
        f"{metrics['model']} on {metrics['dataset']} (seed {metrics['seed']}): "
        f"val/acc {metrics['val/acc']:.4f} | test/acc {metrics['test/acc']:.4f} | "
        f"{out_dir / 'eval_metrics.json'}"
    )
    return metrics


def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
