"""Early stopping and best-validation checkpointing with the GAT paper's rule."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from gnn_attn.errors import UserError


class EarlyStoppingCheckpoint(Callback):
    r"""Stop when no monitored validation metric improved for ``patience`` epochs, and
    keep the weights of the epoch where all of them were at their best.

    This is the protocol of the official GAT code (and the paper's "patience of 100
    epochs" on validation loss *and* accuracy), which neither Lightning's ``EarlyStopping``
    nor ``ModelCheckpoint`` can express (each watches one metric):

    - after every validation, a metric *improves* when it is at least as good as its best
      so far (ties count, as in the official code);
    - if any metric improved, the patience counter resets; if all of them did, the model
      is saved to ``best.ckpt`` (the selected model: test accuracy is measured there);
    - each metric's best is then updated on its own; after ``patience`` validations with
      no improvement, training stops.

    With a single monitor this is ordinary early stopping plus best checkpointing.

    The selected checkpoint is snapshotted in memory when it changes (the full Lightning
    checkpoint: weights, optimizer and loop state of that epoch) and written to disk once,
    as ``best.ckpt``, when training ends or is interrupted, together with ``last.ckpt``:
    a disk write per improvement (~7 ms) would cost more than the epochs themselves.

    Args:
        dirpath: folder for ``best.ckpt`` and ``last.ckpt``.
        monitors: metric name → ``min`` or ``max`` (default ``val/loss: min, val/acc: max``).
        patience: validations without improvement before stopping (default 100); 0 turns
            early stopping off (the best model is still kept).
        save_last: write ``last.ckpt`` at the end of training.
    """

    def __init__(
        self,
        dirpath: str,
        monitors: dict[str, str] | None = None,
        patience: int = 100,
        save_last: bool = True,
    ) -> None:
        super().__init__()
        self.monitors = dict(monitors or {"val/loss": "min", "val/acc": "max"})
        for name, mode in self.monitors.items():
            if mode not in ("min", "max"):
                raise ValueError(f"monitors.{name} must be min or max (got {mode})")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer ≥ 0 (got {patience!r})")
        self.dirpath = Path(dirpath)
        self.patience = patience
        self.save_last = save_last
        self.best = {n: (math.inf if m == "min" else -math.inf) for n, m in self.monitors.items()}
        self.wait = 0
        self.best_epoch = -1
        self.selected: dict[str, float] = {}
        self.stopped_epoch: int | None = None
        self._snapshot: dict[str, Any] | None = None
        self._dumping = False

    @property
    def best_model_path(self) -> str:
        return str(self.dirpath / "best.ckpt")

    @property
    def last_model_path(self) -> str:
        return str(self.dirpath / "last.ckpt")

    def _at_least_as_good(self, name: str, value: float) -> bool:
        best = self.best[name]
        return value <= best if self.monitors[name] == "min" else value >= best

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        missing = [n for n in self.monitors if n not in metrics]
        if missing:
            raise UserError(
                f"early_stopping monitors {', '.join(missing)}, which the model does not log; "
                f"use some of {', '.join(sorted(metrics))}"
            )
        values = {n: float(metrics[n]) for n in self.monitors}
        improved = {n: self._at_least_as_good(n, v) for n, v in values.items()}
        if any(improved.values()):
            if all(improved.values()):
                self.best_epoch = trainer.current_epoch
                self.selected = values
                self._snapshot = self._dump(trainer)
            for n, v in values.items():
                if improved[n]:
                    self.best[n] = v
            self.wait = 0
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                self.stopped_epoch = trainer.current_epoch
                trainer.should_stop = True

    def _dump(self, trainer: L.Trainer) -> dict[str, Any]:
        # What Trainer.save_checkpoint writes, copied so later steps do not change it
        # (without the previous snapshot inside: see state_dict).
        self._dumping = True
        try:
            ckpt = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            return copy.deepcopy(ckpt)
        finally:
            self._dumping = False

    def _write(self, trainer: L.Trainer) -> None:
        if self._snapshot is not None:
            trainer.strategy.save_checkpoint(self._snapshot, self.best_model_path)
        if self.save_last:
            trainer.save_checkpoint(self.last_model_path, weights_only=False)
        trainer.strategy.barrier("best_checkpoint_written")  # DDP: rank 0 writes, all read

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn == "fit" and trainer.current_epoch > 0:
            self._write(trainer)

    def state_dict(self) -> dict[str, Any]:
        """Selection state; ``last.ckpt`` also carries the best snapshot, so a resumed run
        selects exactly as an unbroken one would."""
        state = {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "selected": self.selected,
        }
        if not self._dumping:
            state["snapshot"] = self._snapshot
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict["best"])
        self.wait = state_dict["wait"]
        self.best_epoch = state_dict["best_epoch"]
        self.selected = dict(state_dict["selected"])
        self._snapshot = state_dict.get("snapshot")
