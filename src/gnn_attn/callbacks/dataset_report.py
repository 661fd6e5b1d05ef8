"""The dataset report: statistics and the degree histogram."""

from __future__ import annotations

import json

import lightning as L
import numpy as np

from gnn_attn.callbacks.pictures import PictureCallback
from gnn_attn.data import node_degree


class DatasetReport(PictureCallback):
    """At the start of training: ``dataset.json`` (nodes, edges, features, classes, split
    sizes, isolated nodes, mean/max degree, feature density) and ``degree_histogram.png``
    (node count per degree, log-scaled counts)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.safely("dataset report", lambda: self._run(trainer))

    def _run(self, trainer: L.Trainer) -> None:
        import matplotlib.pyplot as plt

        dm = trainer.datamodule
        (self.output_dir / "dataset.json").write_text(json.dumps(dm.stats, indent=2) + "\n")
        deg = node_degree(dm.data.edge_index, dm.data.num_nodes).numpy()
        counts = np.bincount(deg)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4C72B0")
        ax.set_yscale("log")
        ax.set_title(
            f"Degree distribution of {dm.name}: {dm.stats['nodes']} nodes, "
            f"mean degree {dm.stats['mean_degree']}, {dm.stats['isolated']} isolated"
        )
        ax.set_xlabel("node degree (neighbours)")
        ax.set_ylabel("number of nodes (log scale)")
        fig.subplots_adjust(left=0.1, right=0.97, top=0.88, bottom=0.12)
        path = self.output_dir / "degree_histogram.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.publish(trainer, {"degree_histogram": path})
