"""Fused GAT and GATv2 layers: PyG's ``GATConv``/``GATv2Conv`` computed faster on a
fixed graph, over the shared operations of :mod:`gnn_attn.models.attention_ops`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.inits import glorot, zeros

from gnn_attn.models.attention_ops import (
    AttendAggregate,
    AttentionGraph,
    dynamic_scores,
    edge_softmax,
)
from gnn_attn.models.cache import GraphCache
from gnn_attn.models.sparse import dropout, project, project_per_head


class FusedAttentionConv(nn.Module):
    r"""What :class:`FusedGATConv` and :class:`FusedGATv2Conv` share: the projection,
    the aggregation and the output. A subclass defines its parameters and
    :meth:`scores` (the attention logits :math:`e^k_{ij}`); then, for target :math:`i`,
    head :math:`k`, neighbours :math:`j \in \mathcal{N}(i)\cup\{i\}`,

    .. math::
        \alpha^k_{ij} = \mathrm{softmax}_j(e^k_{ij}),\qquad
        \mathbf{h}'^{k}_i = \sum_j \mathrm{drop}(\alpha^k_{ij})\,
          \mathrm{drop}_f(\mathbf{W}^k\mathbf{x}_j),

    heads concatenated or averaged, plus a bias. What makes it faster than PyG's layers on
    a fixed graph: the self-loop/sorted structure is built once per ``edge_index``
    (:class:`~gnn_attn.models.attention_ops.AttentionGraph`, cached); the projection
    weight is stored as :math:`(F_{in}, n\,HC)` (one product for all projections) and
    CSR inputs are projected with ``embedding_bag``
    (:func:`~gnn_attn.models.sparse.project`); the attention logits are one small matmul
    with a block-diagonal matrix of the attention vectors; softmax, dropout and
    aggregation are one autograd node
    (:class:`~gnn_attn.models.attention_ops.AttendAggregate`).

    Args:
        in_channels, out_channels: :math:`F_{in}`, features per head :math:`C`.
        heads: :math:`H`.
        concat: concatenate (:math:`HC` outputs) or average (:math:`C`) the heads.
        negative_slope: LeakyReLU slope.
        dropout: dropout on :math:`\alpha` (training only).
        feat_dropout: dropout :math:`\mathrm{drop}_f` on the projected features before
            aggregation (the official GAT code does this; PyG's layer cannot; default 0).
        input_dropout: dropout on the layer's input with one mask per head, as the
            official GAT code (each head drops its own copy of :math:`\mathbf{x}`; see
            :func:`~gnn_attn.models.sparse.project_per_head`). Default 0: the caller
            drops the input once for all heads, as PyG's layers expect.

    Shapes: ``x`` :math:`(N, F_{in})` (dense or CSR), ``edge_index`` :math:`(2, E)` →
    :math:`(N, HC)` or :math:`(N, C)`; with ``return_attention_weights=True`` also
    ``(edge_index (2, E'), alpha (E', H))``; with ``num_dst`` the first ``num_dst``
    rows only (a sampled batch's inner hops).
    """

    bipartite = True  # forward takes num_dst (see LayerStack._run)
    projections = 1  # projections of the input per head (GATv2: W_l and W_r)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        feat_dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope = concat, negative_slope
        self.dropout, self.feat_dropout = dropout, feat_dropout
        self.input_dropout = input_dropout
        hc = heads * out_channels
        self.weight = nn.Parameter(torch.empty(in_channels, self.projections * hc))
        self._init_attention()
        self.bias = nn.Parameter(torch.empty(hc if concat else out_channels))
        # head_mask[i, 0, k] = 1 where feature i (of H·C) belongs to head k (see _blocks)
        head_of = torch.arange(hc) // out_channels
        mask = (head_of.view(hc, 1, 1) == torch.arange(heads).view(1, 1, heads)).float()
        self.register_buffer("head_mask", mask, persistent=False)
        self._graphs: GraphCache[AttentionGraph] = GraphCache()
        self.reset_parameters()

    def _init_attention(self) -> None:
        raise NotImplementedError

    def scores(self, x: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        """Attention logits :math:`e` :math:`(E', H)` and the projected source features
        :math:`(N, H, C)`."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """PyG's initialisation: Glorot for each projection and attention vector, PyG
        ``Linear``'s uniform bias for GATv2's projections, zero output bias."""
        hc = self.heads * self.out_channels
        for k in range(self.projections):
            glorot(self.weight.data[:, k * hc : (k + 1) * hc])
        for name in ("att_src", "att_dst", "att"):
            if hasattr(self, name):
                glorot(getattr(self, name))
        if getattr(self, "lin_bias", None) is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.lin_bias, -bound, bound)
        zeros(self.bias)

    def graph(
        self, edge_index: Tensor, num_nodes: int, num_dst: int | None = None
    ) -> AttentionGraph:
        """The :class:`AttentionGraph` of ``edge_index``, built once (cached)."""
        return self._graphs.get(
            edge_index, (num_nodes, num_dst), lambda: AttentionGraph(edge_index, num_nodes, num_dst)
        )

    def _blocks(self, *atts: Tensor) -> Tensor:
        """Attention vectors :math:`(1, H, C)` each → block-diagonal :math:`(HC, AH)`
        (one :math:`(HC, H)` block per vector): ``z @ blocks`` sums each head's :math:`C`
        features weighted by its attention vector. One product with a constant head mask
        (two kernels forward and backward, where ``torch.block_diag`` launches one copy
        per head: it matters where kernel launches dominate, as on a GPU)."""
        hc = self.heads * self.out_channels
        a = atts[0].reshape(hc, 1) if len(atts) == 1 else torch.stack(atts, -1).reshape(hc, -1)
        return (a.unsqueeze(-1) * self.head_mask).reshape(hc, -1)

    def _project(self, x: Tensor) -> Tensor:
        r""":math:`\mathbf{x}\mathbf{W}` :math:`(N, n\,HC)`, with ``input_dropout`` drawn
        per head (every projection of head :math:`k` sees the same copy)."""
        p, h, c, n_proj = self.input_dropout, self.heads, self.out_channels, self.projections
        if p == 0.0 or not self.training:
            return project(x, self.weight)
        f, n = self.in_channels, x.size(0)
        if n_proj == 1:
            return project_per_head(x, self.weight.view(f, h, c), h, p, True)
        w = self.weight.view(f, n_proj, h, c).transpose(1, 2).reshape(f, h, n_proj * c)
        out = project_per_head(x, w, h, p, True)
        return out.view(n, h, n_proj, c).transpose(1, 2).reshape(n, n_proj * h * c)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        return_attention_weights: bool | None = None,
        num_dst: int | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """``num_dst``: compute outputs for the first ``num_dst`` nodes only (a sampled
        batch's inner hops; see :class:`AttentionGraph`); the result has that many rows."""
        n, h, c = x.size(0), self.heads, self.out_channels
        g = self.graph(edge_index, n, num_dst)
        e, x_src = self.scores(x, g)
        x_msg = dropout(x_src, self.feat_dropout, self.training)
        out = AttendAggregate.apply(e, x_msg, g.layout(h), self.dropout, self.training)
        out = out.reshape(g.num_dst, h * c) if self.concat else out.mean(dim=1)
        out = out + self.bias
        if return_attention_weights:
            return out, (g.edge_index, edge_softmax(e.detach(), g))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"


class FusedGATConv(FusedAttentionConv):
    r"""GAT's attention (Veličković et al., 2018, https://arxiv.org/abs/1710.10903),
    numerically equal to PyG's :class:`~torch_geometric.nn.conv.GATConv` with the same
    parameters:

    .. math::
        e^{k}_{ij} = \mathrm{LeakyReLU}\big(\mathbf{a}_{s}^{k\top}\mathbf{W}^k\mathbf{x}_j
            + \mathbf{a}_{d}^{k\top}\mathbf{W}^k\mathbf{x}_i\big)

    "Static" attention: LeakyReLU is monotonic, so every target ranks its neighbours by
    the same :math:`\mathbf{a}_s^\top\mathbf{W}\mathbf{x}_j`. Arguments and shapes:
    :class:`FusedAttentionConv`.
    """

    def _init_attention(self) -> None:
        self.att_src = nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, self.heads, self.out_channels))

    def scores(self, x: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        n, h, c = x.size(0), self.heads, self.out_channels
        proj = self._project(x)
        logits = proj @ self._blocks(self.att_src, self.att_dst)
        e = logits[:, :h].index_select(0, g.src) + logits[:, h:].index_select(0, g.dst)
        return F.leaky_relu(e, self.negative_slope), proj.view(n, h, c)


class FusedGATv2Conv(FusedAttentionConv):
    r"""GATv2's attention (Brody et al., 2022, https://arxiv.org/abs/2105.14491),
    numerically equal to PyG's :class:`~torch_geometric.nn.conv.GATv2Conv` with the same
    parameters (:math:`\mathbf{W} = [\mathbf{W}_l \Vert \mathbf{W}_r]` stored as one
    weight, ``lin_bias`` their biases):

    .. math::
        e^{k}_{ij} = \mathbf{a}^{k\top}\mathrm{LeakyReLU}\big(\mathbf{W}_l^k\mathbf{x}_j
            + \mathbf{W}_r^k\mathbf{x}_i\big)

    "Dynamic" attention: the nonlinearity comes before :math:`\mathbf{a}`, so the
    ranking of neighbours can depend on the target. Arguments and shapes:
    :class:`FusedAttentionConv`.
    """

    projections = 2

    def _init_attention(self) -> None:
        self.att = nn.Parameter(torch.empty(1, self.heads, self.out_channels))
        self.lin_bias = nn.Parameter(torch.empty(2 * self.heads * self.out_channels))

    def scores(self, x: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        n, h, c = x.size(0), self.heads, self.out_channels
        proj = self._project(x) + self.lin_bias
        x_src, x_dst = proj[:, : h * c], proj[:, h * c :]
        if not torch.is_grad_enabled():  # validation, test: in cache-sized blocks
            e = dynamic_scores(x_src, x_dst, self.att.view(h, c), g, self.negative_slope)
            return e, x_src.reshape(n, h, c)
        z = x_src.index_select(0, g.src) + x_dst.index_select(0, g.dst)
        e = F.leaky_relu(z, self.negative_slope) @ self._blocks(self.att)
        return e, x_src.reshape(n, h, c)
