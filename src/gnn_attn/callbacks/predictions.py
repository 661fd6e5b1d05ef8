"""Every node's prediction of the selected checkpoint, as a CSV and a W&B table."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from gnn_attn.callbacks.pictures import PictureCallback
from gnn_attn.callbacks.tsne import TSNEPlot
from gnn_attn.data import node_degree

COLUMNS = [
    "node", "split", "degree", "label", "class", "prediction", "predicted_class",
    "confidence", "correct", "tsne_x", "tsne_y",
]  # fmt: skip


class NodePredictions(PictureCallback):
    r"""One row per node for the best-validation checkpoint, after ``trainer.test``:
    ``node`` id, ``split`` (train/val/test/none), ``degree``, ``label`` and its
    ``class`` name, ``prediction`` and ``predicted_class``, ``confidence``
    (:math:`\max_c \operatorname{softmax}(z_i)_c`), ``correct``, and ``tsne_x``,
    ``tsne_y`` (the "after" t-SNE position when :class:`~gnn_attn.callbacks.TSNEPlot`
    embedded the node; empty otherwise).

    Writes ``predictions.csv``; with W&B, logs the same rows as the table ``predictions``
    (filter by split, colour the t-SNE scatter by class or correctness in the dashboard).
    Runs in ``teardown`` of the test stage, so the t-SNE callback has finished whatever
    the callbacks' order.

    Args:
        output_dir: where ``predictions.csv`` goes.
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__(output_dir)
        self._done = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test" and not self._done:
            self._done = True
            self.safely("node predictions", lambda: self._run(trainer, pl_module))

    def rows(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[list[Any]]:
        """The table's rows, in :data:`COLUMNS` order, one per node."""
        data = self.graph(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            prob = torch.softmax(pl_module(data).float(), dim=-1).cpu()
        pl_module.train(was_training)
        confidence, pred = prob.max(dim=-1)
        y = data.y.cpu()
        deg = node_degree(data.edge_index, data.num_nodes).cpu()
        split = ["none"] * data.num_nodes
        for name in ("train", "val", "test"):
            for i in torch.nonzero(data[f"{name}_mask"].cpu()).flatten().tolist():
                split[i] = name
        xy: dict[int, tuple[float, float]] = {}
        for cb in trainer.callbacks:
            if isinstance(cb, TSNEPlot) and "after" in cb.coordinates:
                ids, pos = cb.coordinates["after"]
                for i, (px, py) in zip(ids.tolist(), pos.tolist(), strict=True):
                    xy[i] = (round(px, 3), round(py, 3))
        names = self.class_names(trainer)
        rows = []
        for i, (label, p, c, d) in enumerate(
            zip(y.tolist(), pred.tolist(), confidence.tolist(), deg.tolist(), strict=True)
        ):
            tx, ty = xy.get(i, (None, None))
            rows.append(
                [i, split[i], d, label, names[label], p, names[p], round(c, 4), label == p, tx, ty]
            )
        return rows

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self.rows(trainer, pl_module)
        with (self.output_dir / "predictions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            writer.writerows(rows)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="predictions", columns=COLUMNS, data=rows)
