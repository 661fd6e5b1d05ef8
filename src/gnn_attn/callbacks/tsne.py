"""t-SNE of the node embeddings before and after training."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from gnn_attn.callbacks.pictures import PictureCallback


def tsne_2d(x: np.ndarray, seed: int = 0, max_iter: int = 500) -> np.ndarray:
    """2-D t-SNE (scikit-learn, Barnes–Hut, PCA initialisation), :math:`(N, D) → (N, 2)`."""
    return TSNE(
        n_components=2,
        init="pca",
        learning_rate="auto",
        perplexity=30.0,
        max_iter=max_iter,
        random_state=seed,
        n_jobs=-1,
    ).fit_transform(x)


class TSNEPlot(PictureCallback):
    r"""t-SNE of the hidden node representation, before training (random weights) and
    after (the best-validation checkpoint, at test time).

    The representation is :meth:`~gnn_attn.models.NodeClassifier.embeddings`: the input
    of the output layer, :math:`(N, F_{L-1})` (for GAT, the concatenated heads after ELU),
    computed in eval mode on the whole graph. Up to ``max_nodes`` nodes are drawn (a
    seeded random subset beyond that: t-SNE is quadratic-ish), coloured by class; test
    nodes are drawn as filled dots, the others as small faint ones.

    Writes ``tsne_before.png``, ``tsne_after.png``; adds to the summary the silhouette
    score of the classes in the embedding (cosine; −1…1, higher = better separated),
    ``tsne/silhouette_before`` and ``tsne/silhouette_after``, and ``tsne/seconds``.

    Args:
        output_dir: where the PNGs go.
        max_iter: t-SNE iterations (400 keeps CiteSeer at ~6 s on 2 cores).
        seed: t-SNE's random state (and the subset's).
        max_nodes: most nodes embedded (default 5000; Cora and CiteSeer fit whole).
    """

    def __init__(
        self, output_dir: str, max_iter: int = 400, seed: int = 0, max_nodes: int = 5000
    ) -> None:
        super().__init__(output_dir)
        self.max_iter, self.seed, self.max_nodes = max_iter, seed, max_nodes
        self._done_after = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.safely("t-SNE before training", lambda: self._draw(trainer, pl_module, "before"))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done_after:
            self._done_after = True
            self.safely("t-SNE after training", lambda: self._draw(trainer, pl_module, "after"))

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        import matplotlib.pyplot as plt

        data = self.graph(trainer, pl_module)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            emb = pl_module.embeddings(data).float().cpu().numpy()
        pl_module.train(was_training)
        y = data.y.cpu().numpy()
        test = data.test_mask.cpu().numpy()
        if len(y) > self.max_nodes:
            keep = np.random.default_rng(self.seed).choice(len(y), self.max_nodes, replace=False)
            emb, y, test = emb[keep], y[keep], test[keep]
        start = time.perf_counter()
        xy = tsne_2d(emb, self.seed, self.max_iter)
        seconds = time.perf_counter() - start
        score = float(silhouette_score(emb, y, metric="cosine")) if len(set(y)) > 1 else 0.0
        self.summary[f"tsne/silhouette_{when}"] = round(score, 4)
        self.summary[f"tsne/seconds_{when}"] = round(seconds, 2)
        fig, ax = plt.subplots(figsize=(7, 6))
        cmap = plt.get_cmap("tab10")
        for c in np.unique(y):
            rest, mark = (y == c) & ~test, (y == c) & test
            ax.scatter(*xy[rest].T, s=3, alpha=0.25, color=cmap(c % 10))
            ax.scatter(*xy[mark].T, s=9, alpha=0.9, color=cmap(c % 10), label=f"class {c}")
        name = getattr(trainer.datamodule, "name", "graph")
        model = self.model_name(pl_module)
        stage = "random weights" if when == "before" else "best-validation checkpoint"
        ax.set_title(
            f"t-SNE of {model} embeddings on {name}, {stage}\n"
            f"silhouette (classes) = {score:.3f}; dots = test nodes"
        )
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.legend(markerscale=2, fontsize=8, loc="best", title="class")
        fig.tight_layout()
        path = self.output_dir / f"tsne_{when}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self.publish(trainer, {f"tsne_{when}": Path(path)})
