"""Stop cleanly on SIGINT/SIGTERM (and a cluster's preemption signal): finish the
epoch, write the checkpoints, report."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


def preemption_signal() -> int | None:
    """The signal submitit sends a job before preemption or its time limit (SIGUSR2
    unless ``$SUBMITIT_PREEMPT_SIGNAL`` names another); None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", None)


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a run: SIGINT, SIGTERM, and under submitit its preemption
    signal instead of SIGTERM (submitit ignores SIGTERM, which SLURM sends at preemption,
    so that the job can checkpoint on the preemption signal and be requeued)."""
    preempt = preemption_signal()
    if preempt is None:
        return (signal.SIGINT, signal.SIGTERM)
    return (signal.SIGINT, preempt)


class StopOnSignal(Callback):
    """While training, SIGINT (Ctrl-C), SIGTERM or a submitit job's preemption signal
    ends the current epoch and stops training the normal way, so ``last.ckpt`` and
    ``best.ckpt`` are written; the signal is kept in ``received`` for the caller (train.py
    exits 128 + signal and prints the resume command; after a preemption it hands the
    signal on to submitit with :meth:`hand_over`, which requeues the job). Installed at
    ``on_train_start``, after Lightning's own handlers; the previous handlers come back
    at ``on_train_end``."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def preempted(self) -> bool:
        return self.received is not None and self.received == preemption_signal()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.received = signum
            trainer.should_stop = True

        self._previous = {s: signal.signal(s, handler) for s in stop_signals()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def hand_over(self) -> None:
        """Deliver the received signal again, now to the handlers from before training
        (submitit's, after a preemption: it requeues the job and exits)."""
        if self.received is not None:
            signal.raise_signal(self.received)
