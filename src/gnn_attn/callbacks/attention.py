"""What the attention weights of a trained GAT/GATv2 actually do."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from gnn_attn.analysis.attention_plots import draw_matrix, first_graph_matrix, static_references
from gnn_attn.analysis.graph import (
    attended_degree,
    attention_entropy,
    self_attention_share,
    uniform_entropy,
)
from gnn_attn.analysis.static_attention import StaticScore, static_score
from gnn_attn.callbacks.pictures import PictureCallback
from gnn_attn.data import node_degree


class AttentionAnalysis(PictureCallback):
    r"""Attention of the best-validation checkpoint, for backbones with ``has_attention``
    (GAT, GATv2; other models: one message, nothing else).

    - ``attention_summary.png``, one figure: left, per layer and head, the distribution
      over nodes of the entropy ratio :math:`H_i / \log a_i`, where
      :math:`H_i = -\sum_j lpha_{ij}\loglpha_{ij}` over the :math:`a_i` edges node
      :math:`i` attends over (:math:`a_i = d_i + 1` with self-loops), for nodes with
      :math:`a_i \ge 2` (box = quartiles, whiskers = 5–95 %); 1 = uniform attention, what
      GCN-style averaging gives; lower = focused on few neighbours. Right, per layer and
      head, the mean self-attention :math:`lpha_{ii}` against its uniform value
      :math:`\operatorname{mean}_i 1/a_i` (layers with self-loops).
    - summary: ``attention/entropy_ratio_l<l>`` (mean ratio over those nodes and heads)
      and ``attention/self_share_l<l>`` (mean :math:`lpha_{ii}` over nodes and heads).
    - ``attention_node.png``: the 1-hop neighbourhood of one node, edge width and opacity
      ∝ :math:`lpha` (first layer, mean over heads), nodes coloured by class. The node,
      unless ``node`` is given: among test nodes with ``min_degree`` ≤ degree ≤
      ``max_degree`` (enough neighbours to compare, few enough to draw), the one whose
      attention is farthest from uniform, i.e. the largest
      :math:`\mathrm{KL}(arlpha_i \,\|\, \mathrm{uniform}) = \log a_i - H(arlpha_i)`.
    - static attention (Brody et al., 2022; :func:`~gnn_attn.analysis.static_attention.
      static_score`): per layer and head, over pairs of queries that share two or more
      neighbours, the share of shared-neighbour pairs both queries rank in the same
      order; 1 = one global ranking (GAT, by construction), ≈ 0.5 = unrelated rankings.
      ``attention/static_l<l>`` = the mean over heads (third panel of the summary),
      at most ``static_comparisons`` comparisons, drawn with ``static_seed``.
    - ``attention_matrix.png`` (a data module of many graphs, e.g. DictionaryLookup):
      the first layer's attention (mean of heads) of the first test graph, its scored
      nodes (rows) × the other nodes that send them edges (columns).
    - ``attention.pt``: every layer's ``edge_index`` :math:`(2, E')` and ``alpha``
      :math:`(E', K)` and static score (per head, ``static``), ``y`` and the masks (and
      the matrix above, ``matrix``), for your own analysis.

    Args:
        output_dir: where the files go.
        node: node to draw; ``null`` = the rule above.
        min_degree: smallest degree of the chosen node.
        max_degree: largest degree of the chosen node (larger ones do not draw legibly).
        static_comparisons: comparisons drawn at most for the static score per layer.
        static_seed: the seed of that sample.
    """

    def __init__(
        self,
        output_dir: str,
        node: int | None = None,
        min_degree: int = 3,
        max_degree: int = 12,
        static_comparisons: int = 200_000,
        static_seed: int = 0,
    ) -> None:
        super().__init__(output_dir)
        if static_comparisons < 1:
            raise ValueError(f"static_comparisons must be ≥ 1 (got {static_comparisons})")
        self.static_comparisons, self.static_seed = static_comparisons, static_seed
        if min_degree > max_degree:
            raise ValueError(
                f"min_degree ({min_degree}) must be ≤ max_degree ({max_degree}); lower it"
            )
        self.node, self.min_degree, self.max_degree = node, min_degree, max_degree
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
        static = [
            static_score(ei, a, self.static_comparisons, seed=self.static_seed) for ei, a in layers
        ]
        for i, score in enumerate(static, start=1):
            if score.mean == score.mean:  # NaN: every comparison tied
                self.summary[f"attention/static_l{i}"] = round(score.mean, 4)
        matrix = first_graph_matrix(data, *layers[0]) if "batch" in data else None
        torch.save(
            {
                "layers": [
                    {"edge_index": ei, "alpha": a, "static": st.as_dict()}
                    for (ei, a), st in zip(layers, static, strict=True)
                ],
                "y": data.y.cpu(),
                "train_mask": data.train_mask.cpu(),
                "val_mask": data.val_mask.cpu(),
                "test_mask": data.test_mask.cpu(),
                **({"matrix": matrix} if matrix is not None else {}),
            },
            self.output_dir / "attention.pt",
        )
        ratios: list[Tensor] = []  # per layer: (nodes with a_i ≥ 2, K)
        shares: list[tuple[Tensor, float] | None] = []  # per layer: (α_ii per head, uniform)
        for i, (ei, a) in enumerate(layers, start=1):
            attended = attended_degree(ei, n)
            choice = attended > 1  # a single edge has entropy 0 whatever the weights
            ratio = attention_entropy(ei, a, n)[choice] / uniform_entropy(attended)[choice, None]
            ratios.append(ratio)
            if bool(choice.any()):
                self.summary[f"attention/entropy_ratio_l{i}"] = round(float(ratio.mean()), 4)
            share = self_attention_share(ei, a)
            if share is None:
                shares.append(None)
                continue
            shares.append((share, float((1.0 / attended.clamp_min(1).float()).mean())))
            self.summary[f"attention/self_share_l{i}"] = round(float(share.mean()), 4)
        name = getattr(trainer.datamodule, "name", "graph")
        title = f"{self.model_name(pl_module)} on {name}"
        p1 = self._summary_figure(ratios, shares, static, title)
        p2 = self._node_figure(layers[0], data, deg, title, self.class_names(trainer))
        pictures = {"attention_summary": p1, "attention_node": p2}
        if matrix is not None:
            path = self.output_dir / "attention_matrix.png"
            draw_matrix_figure(matrix, path, f"{title}: layer 1 attention of one test graph")
            pictures["attention_matrix"] = path
        self.publish(trainer, pictures)

    def choose_node(self, layer: tuple[Tensor, Tensor], test: Tensor, deg: Tensor) -> int:
        """The rule of the class doc: the test node of moderate degree whose mean-of-heads
        attention is farthest (KL) from uniform; any node when none qualifies."""
        ei, alpha = layer
        n = deg.numel()
        a = alpha.mean(dim=1, keepdim=True)
        attended = attended_degree(ei, n)
        kl = uniform_entropy(attended) - attention_entropy(ei, a, n)[:, 0]
        ok = test & (deg >= self.min_degree) & (deg <= self.max_degree)
        if not bool(ok.any()):
            ok = deg > 0
        return int(torch.where(ok, kl, torch.full_like(kl, -torch.inf)).argmax())

    def _summary_figure(
        self,
        ratios: list[Tensor],
        shares: list[tuple[Tensor, float] | None],
        static: list[StaticScore],
        title: str,
    ) -> Path:
        import matplotlib.pyplot as plt

        labels, boxes, colors = [], [], []
        palette = plt.get_cmap("tab10")
        for li, ratio in enumerate(ratios, start=1):
            for k in range(ratio.size(1)):
                labels.append(f"L{li}\nh{k + 1}" if ratio.size(1) > 1 else f"L{li}")
                boxes.append(ratio[:, k].numpy())
                colors.append(palette((li - 1) % 10))
        fig, (left, right, third) = plt.subplots(
            1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [3, 2, 2]}
        )
        parts = left.boxplot(boxes, whis=(5, 95), showfliers=False, patch_artist=True,
                             widths=0.6, medianprops={"color": "black"})  # fmt: skip
        for patch, color in zip(parts["boxes"], colors, strict=True):
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        left.axhline(1.0, ls="--", color="gray", lw=1, label="uniform (= averaging)")
        left.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        left.set_ylabel("entropy / uniform entropy, per node")
        left.set_ylim(min(0.0, min((float(b.min()) for b in boxes if b.size), default=0)), 1.08)
        per_layer = ", ".join(
            f"L{li} {float(r.mean()):.2f}" for li, r in enumerate(ratios, start=1) if r.numel()
        )
        left.set_title(
            "Attention entropy ratio H/log a per layer (L) and head (h)\n"
            f"mean over heads and nodes: {per_layer}",
            fontsize=9,
        )
        left.legend(fontsize=8, loc="lower left")
        spread = max((float(b.max() - b.min()) for b in boxes if b.size), default=0.0)
        if spread < 0.01:  # say it in words: the boxes have collapsed onto the line
            left.text(0.5, 0.45, "every node's attention is uniform:\nthe heads average "
                      "their neighbours, as GCN does", transform=left.transAxes, ha="center",
                      fontsize=9, color="#444")  # fmt: skip
        names, values, uniform = [], [], []
        for li, share in enumerate(shares, start=1):
            if share is None:
                continue
            per_head, uni = share
            for k, v in enumerate(per_head.tolist()):
                names.append(f"L{li}\nh{k + 1}" if per_head.numel() > 1 else f"L{li}")
                values.append(v)
                uniform.append(uni)
        if values:
            x = np.arange(len(values))
            right.bar(x, values, color="#8172B2", alpha=0.8, label="mean self-attention α_ii")
            right.scatter(x, uniform, marker="_", s=200, color="black", zorder=3,
                          label="uniform: mean 1/(degree + 1)")  # fmt: skip
            right.set_xticks(x, names, fontsize=7)
            right.set_ylim(0, max(max(values), max(uniform)) * 1.3)
            right.legend(fontsize=8, loc="upper right")
        else:
            right.text(0.5, 0.5, "no self-loops in these layers", ha="center", va="center")
            right.set_xticks([])
        right.set_title("How much each node attends to itself", fontsize=9)
        static_panel(third, static)
        fig.suptitle(f"What the attention does — {title}", fontsize=11)
        fig.subplots_adjust(left=0.05, right=0.99, top=0.82, bottom=0.14, wspace=0.22)
        path = self.output_dir / "attention_summary.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def _node_figure(
        self, layer: tuple[Tensor, Tensor], data: Data, deg: Tensor, title: str,
        class_names: list[str],
    ) -> Path:  # fmt: skip
        import matplotlib.pyplot as plt

        ei, alpha = layer
        a = alpha.mean(dim=1)
        node = self.node if self.node is not None else self.choose_node(
            layer, data.test_mask.cpu(), deg
        )  # fmt: skip
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
        w = weights.clamp_min(1e-30)
        kl = float(np.log(len(weights)) + (w * w.log()).sum())
        span = f"{self.min_degree}–{self.max_degree}"
        rule = (
            "chosen by node="
            if self.node is not None
            else f"chosen: the test node of degree {span} farthest from uniform"
        )
        for c in sorted({int(y[j]) for j in pos}):
            ax.scatter([], [], color=cmap(c % 10), label=class_names[c])
        ax.legend(fontsize=8, loc="upper right", title="node class")
        ax.set_title(
            f"{title}: attention into node {node} (degree {int(deg[node])}; layer 1, mean "
            f"of heads; self {self_w:.2f})\n{rule} (KL to uniform {kl:.3f} nats)",
            fontsize=10,
        )
        ax.set_xlabel("edge width and opacity ∝ attention α")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        fig.subplots_adjust(left=0.02, right=0.92, top=0.9, bottom=0.05)
        path = self.output_dir / "attention_node.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def static_panel(ax: Any, static: list[StaticScore]) -> None:
    """Bars of the static score per layer (L) and head (h), with the two references:
    1 (one global ranking: GAT by construction) and 0.5 (unrelated rankings)."""
    names, values = [], []
    for li, score in enumerate(static, start=1):
        k = score.per_head.numel()
        for h, v in enumerate(score.per_head.tolist()):
            names.append(f"L{li}\nh{h + 1}" if k > 1 else f"L{li}")
            values.append(v)
    x = np.arange(len(values))
    ax.bar(x, np.nan_to_num(values, nan=0.0), color="#C44E52", alpha=0.8)
    for xi, v in zip(x, values, strict=True):
        ax.annotate("n/a" if v != v else f"{v:.3f}", (xi, min(v, 1.0) if v == v else 0.0),
                    ha="center", va="bottom", fontsize=7)  # fmt: skip
    static_references(ax)
    ax.set_xticks(x, names, fontsize=7)
    ax.legend(fontsize=7, loc="lower right")
    sampled = sum(s.compared for s in static)
    ax.set_title(
        f"Static attention: queries rank shared\nneighbours alike ({sampled} comparisons)",
        fontsize=9,
    )


def draw_matrix_figure(matrix: dict[str, Tensor], path: Path, title: str) -> None:
    """:func:`~gnn_attn.analysis.attention_plots.draw_matrix` alone into ``path``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = draw_matrix(ax, matrix["alpha"])
    ax.set_xlabel("neighbour (key–value node for DictionaryLookup)")
    ax.set_title(title, fontsize=9)
    plt.colorbar(image, ax=ax, shrink=0.8, label="attention α")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
