"""What the picture callbacks share: a safe wrapper, the run's graph, W&B image logging."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch_geometric.data import Data

matplotlib.use("Agg")


class PictureCallback(Callback):
    """Base of the analysis callbacks: they write files into ``output_dir``, add numbers
    to ``summary`` (merged into ``metrics.json`` by the training run), log their PNGs to
    W&B when a :class:`WandbLogger` is attached, and never break training: an error is
    reported as one warning and the run goes on.
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.summary: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        """The numbers computed so far: a resumed run keeps those of the "before"
        pictures (computed on the original run's random weights) instead of redoing them."""
        return {"summary": dict(self.summary)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.summary.update(state_dict.get("summary", {}))

    def safely(self, what: str, fn: Callable[[], None]) -> None:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fn()
        except Exception as err:  # a picture must never cost the run
            warnings.warn(
                f"{type(self).__name__}: {what} failed ({type(err).__name__}: {err})", stacklevel=1
            )

    @staticmethod
    def model_name(pl_module: L.LightningModule) -> str:
        """The backbone's name for titles (``GATv2`` for a GAT of version v2)."""
        net = pl_module.net
        return getattr(net, "display_name", type(net).__name__)

    @staticmethod
    def class_names(trainer: L.Trainer) -> list[str]:
        """The data module's ``class_names`` (``class k`` when it has none)."""
        dm = trainer.datamodule
        names = getattr(dm, "class_names", None)
        return list(names) if names else [f"class {k}" for k in range(dm.num_classes)]

    @staticmethod
    def graph(trainer: L.Trainer, pl_module: L.LightningModule) -> Data:
        """The full graph on the module's device (the data module's one batch)."""
        data = trainer.datamodule.data
        return trainer.datamodule.transfer_batch_to_device(data, pl_module.device, 0)

    def publish(self, trainer: L.Trainer, images: dict[str, Path]) -> None:
        """Log PNGs as W&B images (key = file stem), if W&B is among the loggers."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, path in images.items():
                    logger.log_image(key=f"pictures/{key}", images=[str(path)])
