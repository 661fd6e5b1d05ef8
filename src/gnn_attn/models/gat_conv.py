"""Fused GAT and GATv2 layers: PyG's ``GATConv``/``GATv2Conv`` computed faster on a
fixed graph, over the shared operations of :mod:`gnn_attn.models.attention_ops`."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.inits import glorot, zeros

from gnn_attn.models.attention_ops import (
    AttendAggregate,
    AttentionGraph,
    HeadLayout,
    attention_scale,
    dynamic_scores,
    edge_softmax,
)
from gnn_attn.models.cache import GraphCache
from gnn_attn.models.sparse import dropout_scale, project, project_per_head


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
    (:func:`~gnn_attn.models.sparse.project`); the attention logits are per-head sums;
    softmax, dropout and
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
    groups = 1  # groups of heads (a widened copy: one per stacked member; see head_dot)
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
        self._graphs: GraphCache[AttentionGraph] = GraphCache()
        self.reset_parameters()

    def _init_attention(self) -> None:
        raise NotImplementedError

    def scores(self, proj: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        r"""Attention logits :math:`e` :math:`(E', H)` and the source features
        :math:`(N, H, C)` from the projected input ``proj`` :math:`(N, n\,HC)` (the
        :math:`n` projections, each head by head). The one method a new attention
        overrides: a stack of members calls it on :math:`S H` heads (see
        :meth:`widened`)."""
        raise NotImplementedError

    def dropout_scales(
        self, x_shape: torch.Size, layout: HeadLayout
    ) -> tuple[Tensor | None, Tensor | None]:
        """This pass's dropout, drawn in this order: of the source features
        (``feat_dropout``, shaped as them) and of the attention weights (CSR order of
        ``layout``); ``None`` where there is none."""
        feat = None
        if self.training and self.feat_dropout > 0:
            feat = dropout_scale(x_shape, self.feat_dropout, layout.perm.device)
        return feat, attention_scale(layout, self.dropout, self.training)

    def aggregate(
        self,
        e: Tensor,
        x_src: Tensor,
        g: AttentionGraph,
        scales: tuple[Tensor | None, Tensor | None] | None = None,
    ) -> Tensor:
        r""":math:`\sum_j \mathrm{drop}(\alpha^k_{ij})\,\mathrm{drop}_f(\mathbf{x}^k_j)`:
        ``e`` :math:`(E', H)`, ``x_src`` :math:`(N, H, C)` → :math:`(N_d, H, C)`, with
        ``scales`` (:meth:`dropout_scales`) drawn here unless given."""
        layout = g.layout(x_src.size(1))
        feat, attn = self.dropout_scales(x_src.shape, layout) if scales is None else scales
        x_msg = x_src if feat is None else x_src * feat
        return AttendAggregate.apply(e, x_msg, layout, attn)

    def combine(self, out: Tensor) -> Tensor:
        """The heads :math:`(N_d, H, C)` concatenated :math:`(N_d, HC)` or averaged
        :math:`(N_d, C)`, plus the bias."""
        out = out.reshape(out.size(0), -1) if self.concat else out.mean(dim=1)
        return out + self.bias

    def widened(self, members: int) -> FusedAttentionConv:
        """A copy of this layer (its class and settings) with ``members`` times its heads:
        the :math:`H` heads of :math:`S` members as :math:`SH` heads, member :math:`s`'s
        head :math:`k` at :math:`sH + k`. A stack calls its :meth:`scores` with the
        members' parameters in that layout (:meth:`widen_parameter`)."""
        wide = copy.deepcopy(self)
        wide.heads, wide.groups = self.heads * members, members
        wide._graphs = GraphCache()
        return wide

    def widen_parameter(self, name: str, stacked: Tensor) -> Tensor:
        r"""The parameter ``name`` of :math:`S` members, ``stacked`` :math:`(S, \dots)`,
        in the layout of :meth:`widened`: an attention vector :math:`(1, H, C)` becomes
        :math:`(1, SH, C)`; a per-projection vector :math:`(n\,HC)` (GATv2's
        ``lin_bias``) becomes :math:`(n\,SHC)`. A subclass with parameters of other
        shapes overrides this."""
        s, shape = stacked.size(0), tuple(stacked.shape[1:])
        h, c = self.heads, self.out_channels
        if shape == (1, h, c):
            return stacked.reshape(1, s * h, c)
        if len(shape) == 1 and shape[0] % (h * c) == 0:
            n = shape[0] // (h * c)
            return stacked.view(s, n, h * c).transpose(0, 1).reshape(-1)
        raise ValueError(
            f"{type(self).__name__}.{name} of shape {shape} has no head layout to widen; "
            "override widen_parameter"
        )

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

    def project(self, x: Tensor) -> Tensor:
        r"""The projected input :math:`\mathbf{x}\mathbf{W}` :math:`(N, n\,HC)` that
        :meth:`scores` takes, with ``input_dropout`` drawn per head (every projection of
        head :math:`k` sees the same copy). A stack calls it per member."""
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
        g = self.graph(edge_index, x.size(0), num_dst)
        e, x_src = self.scores(self.project(x), g)
        out = self.combine(self.aggregate(e, x_src, g))
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

    def scores(self, proj: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        n, h, c = proj.size(0), self.heads, self.out_channels
        x_src = proj.view(n, h, c)
        a_src = head_dot(x_src, self.att_src, self.groups)  # (N, H)
        a_dst = head_dot(x_src, self.att_dst, self.groups)
        e = a_src.index_select(0, g.src) + a_dst.index_select(0, g.dst)
        return F.leaky_relu(e, self.negative_slope), x_src


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

    def project(self, x: Tensor) -> Tensor:
        r""":math:`[\mathbf{W}_l \Vert \mathbf{W}_r]\mathbf{x}` plus their biases."""
        return super().project(x) + self.lin_bias

    def scores(self, proj: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        n, h, c = proj.size(0), self.heads, self.out_channels
        x_src, x_dst = proj[:, : h * c], proj[:, h * c :]
        if not torch.is_grad_enabled():  # validation, test: in cache-sized blocks
            e = dynamic_scores(x_src, x_dst, self.att.view(h, c), g, self.negative_slope)
            return e, x_src.reshape(n, h, c)
        z = x_src.index_select(0, g.src) + x_dst.index_select(0, g.dst)
        e = head_dot(F.leaky_relu(z, self.negative_slope).view(-1, h, c), self.att, self.groups)
        return e, x_src.reshape(n, h, c)


class HeadDot(torch.autograd.Function):
    r"""Each head's features against its attention vector,
    :math:`e^k_m = \mathbf{a}^{k\top}\mathbf{x}^k_m`.

    The gradient of :math:`\mathbf{a}` is summed over :math:`m` group by group of heads
    (``groups`` equal groups): a widened layer of :math:`S` members' heads sums each
    member's gradient over its own :math:`H` heads, with the arithmetic of the member's
    lone layer (a sum over :math:`m` of a wider tensor rounds differently).

    Shapes: ``x`` :math:`(M, K, C)`, ``att`` :math:`(1, K, C)` → :math:`(M, K)`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, att: Tensor, groups: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, att)
        ctx.groups = groups
        return (x * att).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        x, att = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        prod = g * x
        per = x.size(1) // ctx.groups
        parts = [prod[:, k * per : (k + 1) * per].sum(0, keepdim=True) for k in range(ctx.groups)]
        grad_att = parts[0] if ctx.groups == 1 else torch.cat(parts, dim=1)
        return g * att, grad_att, None


def head_dot(x: Tensor, att: Tensor, groups: int = 1) -> Tensor:
    """:class:`HeadDot`: ``x`` :math:`(M, K, C)`, ``att`` :math:`(1, K, C)` → :math:`(M, K)`."""
    return HeadDot.apply(x, att, groups)
