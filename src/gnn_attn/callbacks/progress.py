"""What a run shows while it trains: a live bar in a terminal, a line every N epochs
elsewhere (logs, CI, sweeps), both with the epoch's metrics and the patience left."""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

from gnn_attn.callbacks.selection import EarlyStoppingCheckpoint

SHOWN = (("train/loss", "loss"), ("val/loss", "val_loss"), ("val/acc", "val_acc"))


def epoch_metrics(trainer: L.Trainer) -> dict[str, Any]:
    """The latest epoch metrics, the best validation accuracy and the patience left
    (from the selection callback), as short labels for display."""
    metrics = trainer.callback_metrics
    items: dict[str, Any] = {
        label: f"{float(metrics[key]):.3f}" for key, label in SHOWN if key in metrics
    }
    if "val/acc_best" in metrics:
        items["best"] = f"{float(metrics['val/acc_best']):.3f}"
    selection = next((c for c in trainer.callbacks if isinstance(c, EarlyStoppingCheckpoint)), None)
    if selection is not None and selection.patience:
        items["patience"] = selection.patience - selection.wait
    return items


class LiveBar(RichProgressBar):
    """Lightning's Rich bar, showing :func:`epoch_metrics` instead of Lightning's
    logged-metric dictionary (the classifier publishes its epoch metrics directly)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return epoch_metrics(trainer)


class EpochLines(Callback):
    """One line every ``every_n_epochs`` epochs (and none in between): for output that
    is not a terminal, where a live bar would leave its redraws behind."""

    def __init__(self, every_n_epochs: int = 100) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or trainer.state.fn != "fit" or epoch % self.every_n_epochs:
            return
        items = " | ".join(f"{k} {v}" for k, v in epoch_metrics(trainer).items())
        print(f"epoch {epoch}/{trainer.max_epochs} | {items}", flush=True)


def training_progress(every_n_epochs: int = 100, leave: bool = False) -> Callback | None:
    """A :class:`LiveBar` when standard output is a terminal, else :class:`EpochLines`
    (``every_n_epochs`` = 0: nothing)."""
    if sys.stdout.isatty():
        return LiveBar(leave=leave)
    return EpochLines(every_n_epochs) if every_n_epochs > 0 else None
