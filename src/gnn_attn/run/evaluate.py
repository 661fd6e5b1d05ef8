"""Evaluate a saved checkpoint on the validation and test nodes (``eval.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gnn_attn.console import quiet
from gnn_attn.run.build import build_data_and_model, build_node, load_run_config
from gnn_attn.run.train import fit_of_selected, write_json


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild data and model from the checkpoint's config; validate and test it, and
    score its training nodes (``train/acc``, ``train/loss``).

    The data paths come from the current config (``paths.*``), so a checkpoint still
    evaluates after the checkout moved. Writes ``<output_dir>/eval_metrics.json``.
    """
    quiet()
    ckpt_path = Path(cfg.ckpt_path).expanduser().resolve()
    run_cfg = load_run_config(ckpt_path)
    data = run_cfg.data
    if "data_dir" in data:
        data.data_dir = cfg.paths.data_dir
    if "cache_dir" in data:
        data.cache_dir = f"{cfg.paths.cache_dir}/{Path(data.cache_dir).name}"
    if "verbose" in data:
        data.verbose = False

    datamodule, module = build_data_and_model(run_cfg, "test")
    trainer = build_node(
        "trainer", cfg.trainer, logger=False, enable_progress_bar=False, callbacks=[]
    )
    val = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    test = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    fit = fit_of_selected(module, datamodule)  # the module holds the checkpoint's weights
    metrics = {
        "dataset": datamodule.name,
        "model": run_cfg.model.name,
        "seed": run_cfg.seed,
        "val/acc": float(val[0]["val/acc"]),
        "val/loss": float(val[0]["val/loss"]),
        "test/acc": float(test[0]["test/acc"]),
        "test/loss": float(test[0]["test/loss"]),
        **module.test_summary(datamodule.class_names),
        **fit,
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
