"""What the attention weights of a trained GAT/GATv2 actually do."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch

from gnn_attn.analysis.graph import (
    attention_entropy,
    node_degree,
    self_attention_share,
    uniform_entropy,
)
from gnn_attn.callbacks.pictures import PictureCallback


class AttentionAnalysis(PictureCallback):
    r"""Attention of the best-validation checkpoint (GAT and GATv2; other models: one
    message, nothing else).

    - ``attention_entropy.png``: per layer (rows) and head (columns), the distribution over
      nodes of the entropy :math:`H_i = -\sum_j \alpha_{ij}\log\alpha_{ij}` next to that of
      uniform attention :math:`\log(d_i + 1)` (what GCN-style averaging gives). Heads whose
      histogram sits left of the uniform one focus on few neighbours.
    - summary: ``attention/self_share_l<l>`` (mean :math:`\alpha_{ii}` over nodes and
      heads) and ``attention/entropy_ratio_l<l>`` (mean :math:`H_i / \log(d_i+1)` over
      nodes with neighbours; 1 = uniform).
    - ``attention_node.png``: the 1-hop neighbourhood of one node, edge width and opacity
      ∝ :math:`\alpha` (first layer, mean over heads), nodes coloured by class.
    - ``attention.pt``: every layer's ``edge_index`` :math:`(2, E')` and ``alpha``
      :math:`(E', K)`, plus ``y`` and the masks, for your own analysis.

    Args:
        output_dir: where the files go.
        node: node to draw; ``null`` = the test node of highest degree.
    """

    def __init__(self, output_dir: str, node: int | None = None) -> None:
        super().__init__(output_dir)
        self.node = node
        self._done = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._done:
            return
        self._done = True
        if not hasattr(pl_module.net, "attention"):
            warnings.warn(f"attention analysis: {type(pl_module.net).__name__} has no "
                          "attention weights; skipped", stacklevel=2)  # fmt: skip
            return
        self.safely("attention analysis", lambda: self._run(trainer, pl_module))

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = self.graph(trainer, pl_module)
        pl_module.eval()
        layers = [(ei.cpu(), a.float().cpu()) for ei, a in pl_module.attention(data)]
        n = data.num_nodes
        deg = node_degree(data.edge_index, n).cpu()
        torch.save(
            {"layers": [{"edge_index": ei, "alpha": a} for ei, a in layers],
             "y": data.y.cpu(), "train_mask": data.train_mask.cpu(),
             "val_mask": data.val_mask.cpu(), "test_mask": data.test_mask.cpu()},
            self.output_dir / "attention.pt",
        )  # fmt: skip
        uniform = uniform_entropy(deg)
        has_nbrs = deg > 0
        entropies = []
        for i, (ei, a) in enumerate(layers, start=1):
            ent = attention_entropy(ei, a, n)
            entropies.append(ent)
            self.summary[f"attention/self_share_l{i}"] = round(
                float(self_attention_share(ei, a).mean()), 4
            )
            ratio = ent[has_nbrs] / uniform[has_nbrs].unsqueeze(1)
            self.summary[f"attention/entropy_ratio_l{i}"] = round(float(ratio.mean()), 4)
        name = getattr(trainer.datamodule, "name", "graph")
        title = f"{getattr(pl_module.net, 'version', '')} {type(pl_module.net).__name__} on {name}"
        p1 = self._entropy_figure(entropies, uniform, title)
        p2 = self._node_figure(layers[0], data, deg, title)
        self.publish(trainer, {"attention_entropy": p1, "attention_node": p2})

    def _entropy_figure(self, entropies, uniform, title):
        import matplotlib.pyplot as plt

        heads = max(e.size(1) for e in entropies)
        cols = min(heads, 4)
        rows_per_layer = [-(-e.size(1) // cols) for e in entropies]
        fig, axes = plt.subplots(sum(rows_per_layer), cols, squeeze=False,
                                 figsize=(3.2 * cols, 2.4 * sum(rows_per_layer)))  # fmt: skip
        bins = np.linspace(0, float(uniform.max()) + 0.1, 30)
        r0 = 0
        for li, ent in enumerate(entropies, start=1):
            for k in range(rows_per_layer[li - 1] * cols):
                ax = axes[r0 + k // cols][k % cols]
                if k >= ent.size(1):
                    ax.axis("off")
                    continue
                ax.hist(uniform.numpy(), bins=bins, alpha=0.45, color="gray", label="uniform")
                ax.hist(ent[:, k].numpy(), bins=bins, alpha=0.7, color="#C44E52",
                        label="attention")  # fmt: skip
                ax.set_title(f"layer {li}, head {k + 1}", fontsize=9)
                ax.set_xlabel("entropy (nats)", fontsize=8)
                ax.set_ylabel("nodes", fontsize=8)
                ax.tick_params(labelsize=7)
            r0 += rows_per_layer[li - 1]
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Attention entropy per node vs uniform attention log(deg+1) — {title}",
                     fontsize=10)  # fmt: skip
        fig.tight_layout()
        path = self.output_dir / "attention_entropy.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def _node_figure(self, layer, data, deg, title):
        import matplotlib.pyplot as plt

        ei, alpha = layer
        a = alpha.mean(dim=1)
        test = data.test_mask.cpu()
        node = self.node
        if node is None:
            node = int(torch.where(test, deg, torch.full_like(deg, -1)).argmax())
        incoming = ei[1] == node
        nbrs, weights = ei[0][incoming], a[incoming]
        y = data.y.cpu()
        others = nbrs != node
        m = int(others.sum())
        angles = np.linspace(0, 2 * np.pi, m, endpoint=False)
        pos = {int(j): (np.cos(t), np.sin(t)) for j, t in zip(nbrs[others], angles, strict=True)}
        pos[node] = (0.0, 0.0)
        fig, ax = plt.subplots(figsize=(6.5, 6.5))
        cmap = plt.get_cmap("tab10")
        wmax = float(weights.max())
        for j, w in zip(nbrs.tolist(), weights.tolist(), strict=True):
            if j == node:
                continue
            (x0, y0), (x1, y1) = pos[j], pos[node]
            ax.plot([x0, x1], [y0, y1], color="black", lw=0.5 + 6 * w / wmax,
                    alpha=0.2 + 0.8 * w / wmax)  # fmt: skip
            ax.annotate(f"{w:.2f}", ((x0 + x1) / 2, (y0 + y1) / 2), fontsize=6, color="#333")
        for j, (x, yy) in pos.items():
            ax.scatter([x], [yy], s=260 if j == node else 90, color=cmap(int(y[j]) % 10),
                       edgecolors="black", zorder=3)  # fmt: skip
        self_w = float(weights[~others].sum()) if (~others).any() else 0.0
        for c in sorted({int(y[j]) for j in pos}):
            ax.scatter([], [], color=cmap(c % 10), label=f"class {c}")
        ax.legend(fontsize=8, loc="upper right", title="node class")
        ax.set_title(f"Attention into node {node} (degree {int(deg[node])}, layer 1, mean of "
                     f"heads; self {self_w:.2f})\n{title}", fontsize=10)  # fmt: skip
        ax.set_xlabel("edge width and opacity ∝ attention α")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        fig.tight_layout()
        path = self.output_dir / "attention_node.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
