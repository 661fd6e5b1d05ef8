"""Test accuracy per node degree."""

from __future__ import annotations

import csv

import lightning as L
import torch

from gnn_attn.analysis.graph import degree_buckets
from gnn_attn.callbacks.pictures import PictureCallback
from gnn_attn.data import node_degree


class DegreeAccuracy(PictureCallback):
    """Test accuracy of the best-validation checkpoint by node degree.

    Buckets are degrees ``0, 1, …, max_bucket - 1`` and ``≥ max_bucket`` (degree = number
    of neighbours, self-loops excluded). Writes ``degree_accuracy.csv`` (bucket, count,
    correct, accuracy, its 95 % Wilson interval) and ``degree_accuracy.png``: one bar per
    bucket with its interval, the node count written above it, the overall test accuracy
    as a dashed line. Adds
    ``degree/acc_low`` (degree ≤ 2) and ``degree/acc_high`` (degree > 2) to the summary.

    Args:
        output_dir: where the files go.
        max_bucket: the degree from which nodes are pooled (default 8).
    """

    def __init__(self, output_dir: str, max_bucket: int = 8) -> None:
        super().__init__(output_dir)
        self.max_bucket = max_bucket
        self._done = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done:
            self._done = True
            self.safely("accuracy per degree", lambda: self._run(trainer, pl_module))

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import matplotlib.pyplot as plt

        data = self.graph(trainer, pl_module)
        with torch.no_grad():
            pred = pl_module(data).argmax(-1)
        mask = data.test_mask
        deg = node_degree(data.edge_index, data.num_nodes)[mask].cpu()
        correct = (pred[mask] == data.y[mask]).cpu()
        rows = degree_buckets(deg, correct, self.max_bucket)
        with (self.output_dir / "degree_accuracy.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        low = deg <= 2
        for key, sel in (("degree/acc_low", low), ("degree/acc_high", ~low)):
            if sel.any():
                self.summary[key] = round(float(correct[sel].float().mean()), 4)
        overall = float(correct.float().mean())
        fig, ax = plt.subplots(figsize=(7, 4.5))
        acc = [100 * r["accuracy"] for r in rows]
        err = [
            [a - 100 * r["ci_low"] for a, r in zip(acc, rows, strict=True)],
            [100 * r["ci_high"] - a for a, r in zip(acc, rows, strict=True)],
        ]
        bars = ax.bar([r["bucket"] for r in rows], acc, yerr=err, capsize=3, color="#55A868")
        for bar, r in zip(bars, rows, strict=True):
            ax.annotate(
                f"n={r['count']}",
                (bar.get_x() + bar.get_width() / 2, 100 * r["ci_high"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.axhline(100 * overall, ls="--", color="gray", label=f"all test nodes {overall:.1%}")
        name = getattr(trainer.datamodule, "name", "graph")
        ax.set_title(
            f"Test accuracy by node degree — {self.model_name(pl_module)} on {name}\n"
            "bars: 95 % Wilson intervals (small buckets are uncertain)",
            fontsize=10,
        )
        ax.set_xlabel("node degree (neighbours)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 105)
        ax.legend(loc="lower right")
        fig.subplots_adjust(left=0.1, right=0.97, top=0.87, bottom=0.12)
        path = self.output_dir / "degree_accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.publish(trainer, {"degree_accuracy": path})
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(
                    key="pictures/degree_accuracy_table",
                    columns=list(rows[0]),
                    data=[list(r.values()) for r in rows],
                )
