"""Stop cleanly on SIGINT/SIGTERM: finish the epoch, write the checkpoints, report."""

from __future__ import annotations

import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopOnSignal(Callback):
    """While training, SIGINT (Ctrl-C) or SIGTERM ends the current epoch and stops
    training the normal way, so ``last.ckpt`` and ``best.ckpt`` are written; the signal
    is kept in ``received`` for the caller (train.py exits 128 + signal and prints the
    resume command). Installed at ``on_train_start``, after Lightning's own handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.received = signum
            trainer.should_stop = True

        self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
