"""The test confusion matrix of the selected checkpoint, with the class names."""

from __future__ import annotations

import lightning as L

from gnn_attn.callbacks.pictures import PictureCallback


class ConfusionMatrix(PictureCallback):
    r"""Draws ``confusion_matrix.png`` from the test report the classifier keeps
    (:attr:`~gnn_attn.models.NodeClassifier.test_report`, computed by ``torchmetrics``):
    a :math:`(C, C)` grid, rows = true classes, columns = predicted classes, each cell the
    count of test nodes, coloured by the share of its row (so the diagonal reads as each
    class's accuracy, also for small classes); the class names label both axes, each
    row's accuracy and test-node count stand on the right.

    Args:
        output_dir: where the file goes.
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = getattr(pl_module, "test_report", None)
        if report and "confusion" in report and trainer.is_global_zero:
            self.safely("confusion matrix", lambda: self._draw(trainer, pl_module, report))

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, report: dict) -> None:
        import matplotlib.pyplot as plt

        counts = report["confusion"].double()
        names = self.class_names(trainer)
        c = counts.shape[0]
        shares = counts / counts.sum(1, keepdim=True).clamp_min(1)
        size = max(4.5, 0.75 * c + 2.5)
        fig, ax = plt.subplots(figsize=(size + 1.6, size))
        image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
        for i in range(c):
            for j in range(c):
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.6 else "black",
                )  # fmt: skip
        ax.set_xticks(range(c), names, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(
            range(c),
            [f"{n}  ({100 * shares[i, i]:.0f} %, n={int(counts[i].sum())})"
             for i, n in enumerate(names)],
            fontsize=8,
        )  # fmt: skip
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class (its accuracy, test nodes)")
        name = getattr(trainer.datamodule, "name", "graph")
        total = counts.sum().clamp_min(1)
        ax.set_title(
            f"Test confusion matrix — {self.model_name(pl_module)} on {name}\n"
            f"accuracy {float(counts.diag().sum() / total):.1%}, macro-F1 "
            f"{report['test/f1_macro']:.3f}; colour = share of the row",
            fontsize=10,
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = self.output_dir / "confusion_matrix.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.publish(trainer, {"confusion_matrix": path})
