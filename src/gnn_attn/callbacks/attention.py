"""What the attention weights of a trained GAT/GATv2 actually do."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch

from gnn_attn.analysis.graph import (
    attended_degree,
    attention_entropy,
    self_attention_share,
    uniform_entropy,
)
from gnn_attn.callbacks.pictures import PictureCallback
from gnn_attn.data import node_degree


class AttentionAnalysis(PictureCallback):
    r"""Attention of the best-validation checkpoint, for backbones with ``has_attention``
    (GAT, GATv2; other models: one message, nothing else).

    - ``attention_entropy.png``: per layer and head, every node's attention entropy
      :math:`H_i = -\sum_j \alpha_{ij}\log\alpha_{ij}` against the entropy of uniform
      attention :math:`\log a_i` over the :math:`a_i` edges it actually attends over
      (:math:`\log(d_i + 1)` for layers with self-loops; what GCN-style averaging gives):
      dots on the diagonal = uniform, below it = attention focused on few neighbours.
    - summary: ``attention/self_share_l<l>`` (mean :math:`\alpha_{ii}` over nodes and
      heads; only for layers with self-loops) and ``attention/entropy_ratio_l<l>`` (mean
      :math:`H_i / \log a_i` over nodes attending over 2 edges or more; 1 = uniform).
    - ``attention_node.png``: the 1-hop neighbourhood of one node, edge width and opacity
      ∝ :math:`\alpha` (first layer, mean over heads), nodes coloured by class.
    - ``attention.pt``: every layer's ``edge_index`` :math:`(2, E')` and ``alpha``
      :math:`(E', K)`, plus ``y`` and the masks, for your own analysis.

    Args:
        output_dir: where the files go.
        node: node to draw; ``null`` = the test node of highest degree ≤ ``max_degree``.
        max_degree: largest degree of the default node (larger ones do not draw legibly).
    """

    def __init__(self, output_dir: str, node: int | None = None, max_degree: int = 12) -> None:
        super().__init__(output_dir)
        self.node, self.max_degree = node, max_degree
        self._done = False

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._done:
            return
        self._done = True
        if not getattr(pl_module.net, "has_attention", False):
            warnings.warn(
                f"attention analysis: {type(pl_module.net).__name__} has no "
                "attention weights; skipped",
                stacklevel=1,
            )
            return
        self.safely("attention analysis", lambda: self._run(trainer, pl_module))

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = self.graph(trainer, pl_module)
        pl_module.eval()
        layers = [(ei.cpu(), a.float().cpu()) for ei, a in pl_module.attention(data)]
        n = data.num_nodes
        deg = node_degree(data.edge_index, n).cpu()
        torch.save(
            {
                "layers": [{"edge_index": ei, "alpha": a} for ei, a in layers],
                "y": data.y.cpu(),
                "train_mask": data.train_mask.cpu(),
                "val_mask": data.val_mask.cpu(),
                "test_mask": data.test_mask.cpu(),
            },
            self.output_dir / "attention.pt",
        )
        entropies, uniforms = [], []
        for i, (ei, a) in enumerate(layers, start=1):
            ent = attention_entropy(ei, a, n)
            attended = attended_degree(ei, n)
            uniform = uniform_entropy(attended)
            entropies.append(ent)
            uniforms.append(uniform)
            share = self_attention_share(ei, a)
            if share is not None:
                self.summary[f"attention/self_share_l{i}"] = round(float(share.mean()), 4)
            choice = attended > 1  # a single edge has entropy 0 whatever the weights
            if bool(choice.any()):
                ratio = ent[choice] / uniform[choice].unsqueeze(1)
                self.summary[f"attention/entropy_ratio_l{i}"] = round(float(ratio.mean()), 4)
        name = getattr(trainer.datamodule, "name", "graph")
        title = f"{self.model_name(pl_module)} on {name}"
        p1 = self._entropy_figure(entropies, uniforms, title)
        p2 = self._node_figure(layers[0], data, deg, title)
        self.publish(trainer, {"attention_entropy": p1, "attention_node": p2})

    def _entropy_figure(self, entropies, uniforms, title):
        import matplotlib.pyplot as plt

        heads = max(e.size(1) for e in entropies)
        cols = min(heads, 4)
        rows_per_layer = [-(-e.size(1) // cols) for e in entropies]
        n_rows = sum(rows_per_layer)
        fig, axes = plt.subplots(n_rows, cols, squeeze=False, figsize=(3.3 * cols, 3.0 * n_rows))
        top = max(float(u.max()) for u in uniforms) * 1.05 + 0.05
        jitter = np.random.default_rng(0).uniform(-0.03, 0.03, size=len(uniforms[0]))
        r0 = 0
        for li, ent in enumerate(entropies, start=1):
            uniform = uniforms[li - 1]
            for k in range(rows_per_layer[li - 1] * cols):
                ax = axes[r0 + k // cols][k % cols]
                if k >= ent.size(1):
                    ax.axis("off")
                    continue
                e = ent[:, k].numpy()
                ax.scatter(uniform.numpy() + jitter, e, s=2, alpha=0.3, color="#C44E52")
                ax.plot([0, top], [0, top], ls="--", color="gray", lw=1, label="uniform")
                nz = uniform.numpy() > 0
                ratio = float(np.mean(e[nz] / uniform.numpy()[nz])) if nz.any() else 1.0
                ax.set_title(f"layer {li}, head {k + 1}: H / H_uniform = {ratio:.2f}", fontsize=9)
                ax.set_xlim(-0.1, top)
                ax.set_ylim(-0.1, top)
                ax.set_xlabel("uniform attention entropy log(attended edges)", fontsize=7)
                ax.set_ylabel("attention entropy (nats)", fontsize=7)
                ax.tick_params(labelsize=7)
            r0 += rows_per_layer[li - 1]
        axes[0][0].legend(fontsize=7, loc="upper left")
        fig.suptitle(
            f"Attention entropy per node against uniform attention — {title}\n"
            "one dot per node; below the dashed line = sharper than averaging",
            fontsize=10,
        )
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
        if node is None:  # the highest-degree test node that still draws legibly
            ok = test & (deg <= self.max_degree)
            node = int(torch.where(ok, deg, torch.full_like(deg, -1)).argmax())
        incoming = ei[1] == node
        nbrs, weights = ei[0][incoming], a[incoming]
        y = data.y.cpu()
        others = nbrs != node
        m = int(others.sum())
        angles = np.linspace(0, 2 * np.pi, m, endpoint=False)
        pos = {int(j): (np.cos(t), np.sin(t)) for j, t in zip(nbrs[others], angles, strict=True)}
        pos[node] = (0.0, 0.0)
        fig, ax = plt.subplots(figsize=(7.2, 6.5))
        cmap = plt.get_cmap("tab10")
        ecmap = plt.get_cmap("viridis")
        wmax = float(weights.max())
        for j, w in zip(nbrs.tolist(), weights.tolist(), strict=True):
            if j == node:
                continue
            (x0, y0), (x1, y1) = pos[j], pos[node]
            ax.plot(
                [x0, x1],
                [y0, y1],
                color=ecmap(w / wmax),
                lw=0.5 + 7 * w / wmax,
                alpha=0.35 + 0.65 * w / wmax,
            )
            if m <= 20:
                ax.annotate(
                    f"{w:.2f}", (0.6 * x0 + 0.4 * x1, 0.6 * y0 + 0.4 * y1), fontsize=7, color="#222"
                )
        sm = plt.cm.ScalarMappable(cmap=ecmap, norm=plt.Normalize(0, wmax))
        fig.colorbar(
            sm, ax=ax, shrink=0.7, label=f"attention α (uniform would be {1 / len(nbrs):.2f})"
        )
        for j, (x, yy) in pos.items():
            ax.scatter(
                [x],
                [yy],
                s=260 if j == node else 90,
                color=cmap(int(y[j]) % 10),
                edgecolors="black",
                zorder=3,
            )
        self_w = float(weights[~others].sum()) if (~others).any() else 0.0
        for c in sorted({int(y[j]) for j in pos}):
            ax.scatter([], [], color=cmap(c % 10), label=f"class {c}")
        ax.legend(fontsize=8, loc="upper right", title="node class")
        ax.set_title(
            f"Attention into node {node} (degree {int(deg[node])}, layer 1, mean of "
            f"heads; self {self_w:.2f})\n{title}",
            fontsize=10,
        )
        ax.set_xlabel("edge width and opacity ∝ attention α")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        fig.tight_layout()
        path = self.output_dir / "attention_node.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
