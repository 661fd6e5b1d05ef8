"""Early stopping and best-validation checkpointing with the GAT paper's rule."""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint

from gnn_attn.errors import UserError


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``checkpoint`` to ``path`` through a temp file, fsync and rename: a kill at any
    moment leaves the previous file whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


MODES = ("min", "max")


def validation_only(key: str, metric: str) -> None:
    """Refuse a test metric where something is selected (early stopping's monitors, a
    sweeper's ``optimized_metric``): validation alone selects."""
    if str(metric).split("/")[0] == "test":
        raise ValueError(
            f"{key}={metric} would select on the test set; validation alone selects: name a "
            "val/ metric (val/acc_best, val/acc, val/loss)"
        )


def parse_monitors(monitors: list[str]) -> dict[str, str]:
    """``[val/loss:min, val/acc:max]`` → ``{"val/loss": "min", "val/acc": "max"}``: each
    entry a metric and whether smaller or larger is better. A list, so that an override
    (``early_stopping.monitors=[val/acc:max]``) replaces the default instead of being
    merged into it."""
    parsed: dict[str, str] = {}
    for entry in monitors:
        name, _, mode = str(entry).rpartition(":")
        if not name or mode not in MODES:
            raise ValueError(
                f"monitors entry '{entry}' must be <metric>:min or <metric>:max, e.g. [val/acc:max]"
            )
        validation_only("monitors", name)
        parsed[name] = mode
    if not parsed:
        raise ValueError("monitors is empty; name at least one, e.g. [val/acc:max]")
    return parsed


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
    checkpoint: weights, optimizer and loop state of that epoch): a disk write per
    improvement (~7 ms) would cost more than the epochs themselves. It is written as
    ``best.ckpt`` together with ``last.ckpt`` (everything exact resume needs: weights,
    optimizer, RNG states, this selection state with the snapshot) when training ends or
    is interrupted, and whenever :class:`PeriodicCheckpoint` asks (:meth:`write`).
    ``best.ckpt`` is rewritten only when the selection changed since the last write.
    Every write is atomic (a temp file in the same folder, fsync, rename, fsync of the
    folder), so a kill at any moment leaves the previous file whole.

    Args:
        dirpath: folder for ``best.ckpt`` and ``last.ckpt``.
        monitors: ``<metric>:min`` or ``<metric>:max`` entries (default
            ``[val/loss:min, val/acc:max]``); never a test metric.
        patience: validations without improvement before stopping (default 100); 0 turns
            early stopping off (the best model is still kept).
        save_last: write ``last.ckpt`` at the end of training.
    """

    def __init__(
        self,
        dirpath: str,
        monitors: list[str] | tuple[str, ...] = ("val/loss:min", "val/acc:max"),
        patience: int = 100,
        save_last: bool = True,
    ) -> None:
        super().__init__()
        self.monitors = parse_monitors(monitors)
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
        self._snapshot_on_disk = -1  # best_epoch of the snapshot last written
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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch is not None:  # resumed after early stopping: train no more
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

    def write(self, trainer: L.Trainer) -> None:
        """Write ``best.ckpt`` (if the selection changed since) and ``last.ckpt`` now."""
        if self._snapshot is not None and self._snapshot_on_disk != self.best_epoch:
            self._save_atomically(trainer, self._snapshot, self.best_model_path)
            self._snapshot_on_disk = self.best_epoch
        if self.save_last:
            last = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            self._save_atomically(trainer, last, self.last_model_path)
        trainer.strategy.barrier("best_checkpoint_written")  # DDP: rank 0 writes, all read

    @staticmethod
    def _save_atomically(trainer: L.Trainer, checkpoint: dict[str, Any], path: str) -> None:
        """:func:`save_atomically` on rank 0."""
        if trainer.is_global_zero:
            save_atomically(checkpoint, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn == "fit" and trainer.current_epoch > 0:
            self.write(trainer)

    def state_dict(self) -> dict[str, Any]:
        """Selection state; ``last.ckpt`` also carries the best snapshot, so a resumed run
        selects exactly as an unbroken one would."""
        state = {
            "best": self.best,
            "wait": self.wait,
            "best_epoch": self.best_epoch,
            "selected": self.selected,
            "stopped_epoch": self.stopped_epoch,
        }
        if not self._dumping:
            state["snapshot"] = self._snapshot
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict["best"])
        self.wait = state_dict["wait"]
        self.best_epoch = state_dict["best_epoch"]
        self.selected = dict(state_dict["selected"])
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self._snapshot = state_dict.get("snapshot")


class PeriodicCheckpoint(Checkpoint):
    """When the selection's checkpoints are written besides the end of training: every
    ``every_n_epochs`` epochs when set, else when ``every_minutes`` minutes of training
    passed since the last write (a short Planetoid run then writes nothing extra).

    A Lightning :class:`~lightning.pytorch.callbacks.Checkpoint`, so that it runs after
    the module's ``on_train_epoch_end`` (the epoch's metrics are logged); the loggers are
    flushed before the write, so a run resumed from it finds every epoch up to the
    checkpoint in ``metrics.csv``. It is the trainer's ``checkpoint_callback`` (Lightning
    then adds no ``ModelCheckpoint``); what is written is
    :meth:`EarlyStoppingCheckpoint.write`.

    Args:
        selection: the run's :class:`EarlyStoppingCheckpoint`.
        every_n_epochs: write every that many epochs (None: by time).
        every_minutes: with ``every_n_epochs`` unset, the longest time between writes
            (None or 0: only at the end).
    """

    def __init__(
        self,
        selection: EarlyStoppingCheckpoint,
        every_n_epochs: int | None = None,
        every_minutes: float | None = 5.0,
    ) -> None:
        super().__init__()
        if every_n_epochs is not None and (
            isinstance(every_n_epochs, bool)
            or not isinstance(every_n_epochs, int)
            or every_n_epochs < 1
        ):
            raise ValueError(
                f"every_n_epochs must be an integer ≥ 1 or null (got {every_n_epochs!r})"
            )
        if every_minutes is not None and every_minutes < 0:
            raise ValueError(f"every_minutes must be ≥ 0 or null (got {every_minutes!r})")
        self.selection = selection
        self.every_n_epochs, self.every_minutes = every_n_epochs, every_minutes
        self._last_write = self._part_start = time.monotonic()
        self.parts: list[dict[str, Any]] = []  # one per run part (a resume starts one)

    @property
    def best_model_path(self) -> str:
        return self.selection.best_model_path

    def due(self, epoch: int) -> bool:
        """Whether a write is due after ``epoch`` (0-based)."""
        if self.every_n_epochs:
            return (epoch + 1) % self.every_n_epochs == 0
        if self.every_minutes:
            return time.monotonic() - self._last_write >= 60 * self.every_minutes
        return False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_write = self._part_start = time.monotonic()
        self.parts.append(
            {"part": len(self.parts) + 1, "first_epoch": trainer.current_epoch,
             "last_epoch": None, "fit_seconds": 0.0, "ms_per_epoch": None}
        )  # fmt: skip

    def _time_part(self, epoch: int) -> None:
        part = self.parts[-1]
        part["last_epoch"] = epoch
        part["fit_seconds"] = round(time.monotonic() - self._part_start, 4)
        done = epoch - part["first_epoch"] + 1
        part["ms_per_epoch"] = round(1000 * part["fit_seconds"] / done, 3) if done > 0 else None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.parts:
            self._time_part(trainer.current_epoch - 1)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._time_part(trainer.current_epoch)
        if self.due(trainer.current_epoch):
            for logger in trainer.loggers:
                logger.save()
            self.selection.write(trainer)
            self._last_write = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        """The timing of the parts trained so far (``metrics.json`` lists them)."""
        return {"parts": [dict(p) for p in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.parts = [dict(p) for p in state_dict.get("parts", [])]
