"""A fused GAT / GATv2 layer for full-batch training on a fixed graph."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.inits import glorot, zeros

from gnn_attn.models.cache import GraphCache
from gnn_attn.models.sparse import dropout, keep_mask, project, project_per_head


class AttentionGraph:
    r"""The graph as attention needs it, built once: self-loops added (any existing ones
    removed, as PyG's layers do), edges sorted by target node.

    With ``num_dst`` :math:`N_d < N` the graph is bipartite, as in a sampled mini-batch:
    all :math:`N` nodes are sources, only the first :math:`N_d` are targets (outputs are
    computed for them alone; they get the self-loops). Edges into other nodes are dropped.

    Attributes:
        src, dst: :math:`(E')` source and target of every edge, ``dst`` ascending.
        ptr: :math:`(N_d + 1)` CSR offsets of each target's incoming edges.
        edge_index: :math:`(2, E')` ``[src, dst]``.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, num_dst: int | None = None) -> None:
        num_dst = num_nodes if num_dst is None else num_dst
        src, dst = edge_index
        keep = src != dst
        if num_dst < num_nodes:
            keep &= dst < num_dst
        loops = torch.arange(num_dst, device=edge_index.device)
        src = torch.cat([src[keep], loops])
        dst = torch.cat([dst[keep], loops])
        order = torch.argsort(dst * num_nodes + src)
        self.src, self.dst = src[order].contiguous(), dst[order].contiguous()
        self.edge_index = torch.stack([self.src, self.dst])
        counts = torch.bincount(self.dst, minlength=num_dst)
        self.ptr = torch.zeros(num_dst + 1, dtype=torch.long, device=edge_index.device)
        self.ptr[1:] = counts.cumsum(0)
        self.num_nodes, self.num_dst = num_nodes, num_dst
        self._layouts: dict[int, HeadLayout] = {}

    def layout(self, heads: int) -> HeadLayout:
        """The :class:`HeadLayout` for ``heads`` heads (built once)."""
        if heads not in self._layouts:
            self._layouts[heads] = HeadLayout(self, heads)
        return self._layouts[heads]


def edge_softmax(e: Tensor, graph: AttentionGraph) -> Tensor:
    r"""Softmax of edge scores over each target's incoming edges.

    .. math::
        \alpha_{ij} = \frac{\exp(e_{ij} - m_i)}{\sum_{k} \exp(e_{ik} - m_i) + 10^{-16}},
        \qquad m_i = \max_k e_{ik}

    (PyG's :func:`~torch_geometric.utils.softmax`, with CSR segment reductions).

    Shapes: ``e`` :math:`(E', H)` → :math:`(E', H)`.
    """
    m = torch.segment_reduce(e.detach(), "max", offsets=graph.ptr, axis=0)
    ex = (e - m.index_select(0, graph.dst)).exp()
    denom = torch.zeros_like(m).index_add_(0, graph.dst, ex) + 1e-16
    return ex / denom.index_select(0, graph.dst)


class HeadLayout:
    r"""The attention of :math:`H` heads as one sparse :math:`(NH \times NH)` matrix.

    Entry :math:`(iH + k,\; jH + k)` holds :math:`\alpha^k_{ij}`, so that with the node
    features viewed as :math:`(NH, C)` one CSR product aggregates every head at once,
    :math:`\mathbf{O} = \mathbf{A}\mathbf{X}`. Each CSR row is one (target, head)
    segment, so the softmax reductions are contiguous segment reductions.

    Attributes:
        perm: :math:`(E'H)` position in ``e.view(-1)`` (edge-major :math:`(E', H)`) of each
            CSR entry; ``inv`` the inverse permutation.
        crow, col, row: CSR offsets, column and row of every entry.
        t_crow, t_col, t_perm: the transpose :math:`\mathbf{A}^\top` (for the gradient of
            :math:`\mathbf{X}`), ``t_perm`` mapping entries of A to entries of A^T.
    """

    def __init__(self, graph: AttentionGraph, heads: int) -> None:
        n, h, dev = graph.num_nodes, heads, graph.src.device
        n_dst = graph.num_dst
        k = torch.arange(h, device=dev)
        rows = (graph.dst.unsqueeze(1) * h + k).reshape(-1)  # edge-major order
        cols = (graph.src.unsqueeze(1) * h + k).reshape(-1)
        # The edges are sorted by (target, source), so the CSR order (target, head,
        # source) is arithmetic: no sort of the E'H entries is needed.
        self.inv = _segment_positions(graph.dst, graph.ptr, h)  # edge-major → CSR
        self.perm = _inverse(self.inv)
        self.row, self.col = rows[self.perm], cols[self.perm]
        self.crow = _offsets(self.row, n_dst * h)
        # A^T in (source, head, target) order: a stable sort of the E' edges by source
        # keeps targets ascending within each source.
        by_src = torch.argsort(graph.src, stable=True)
        src_ptr = _offsets(graph.src[by_src], n)
        t_pos = torch.empty_like(self.inv)
        t_pos.view(-1, h)[by_src] = _segment_positions(graph.src[by_src], src_ptr, h).view(-1, h)
        self.t_perm = torch.empty_like(self.inv)
        self.t_perm[t_pos] = self.inv  # transposed position → CSR position of A
        self.t_col = self.row[self.t_perm]
        self.t_crow = _offsets(self.col[self.t_perm], n * h)
        self.shape = (n_dst * h, n * h)  # of A: (target, head) rows × (source, head) columns

    def matrix(self, values: Tensor) -> Tensor:
        return torch.sparse_csr_tensor(
            self.crow, self.col, values, self.shape, check_invariants=False
        )

    def transpose(self, values: Tensor) -> Tensor:
        return torch.sparse_csr_tensor(
            self.t_crow,
            self.t_col,
            values[self.t_perm],
            self.shape[::-1],
            check_invariants=False,
        )


def _segment_positions(seg: Tensor, ptr: Tensor, heads: int) -> Tensor:
    r"""For items sorted by segment (``seg`` :math:`(M,)` ascending, offsets ``ptr``),
    the position of copy :math:`k` of item :math:`j` when each segment lists its items
    head by head: :math:`H\,\mathrm{ptr}_s + k\,d_s + r_j` (:math:`d_s` the segment's
    size, :math:`r_j` the item's rank in it). Returned in item-major order :math:`(MH,)`."""
    start = ptr.index_select(0, seg)
    deg = ptr.diff().index_select(0, seg)
    rank = torch.arange(seg.numel(), device=seg.device) - start
    k = torch.arange(heads, device=seg.device)
    return (start * heads + rank).unsqueeze(1).add(deg.unsqueeze(1) * k).reshape(-1)


def _inverse(perm: Tensor) -> Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _offsets(sorted_index: Tensor, size: int) -> Tensor:
    ptr = torch.zeros(size + 1, dtype=torch.long, device=sorted_index.device)
    ptr[1:] = torch.bincount(sorted_index, minlength=size).cumsum(0)
    return ptr


class _AttendAggregate(torch.autograd.Function):
    r"""Edge softmax, attention dropout and neighbourhood sum in one autograd node.

    Forward, per head :math:`k` (dropped out: :math:`m_{ij} = 0`):

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j(e_{ij}),\quad
        w_{ij} = \alpha_{ij} m_{ij} / (1 - p),\quad
        \mathbf{o}_i = \sum_j w_{ij}\,\mathbf{x}_j

    Backward (:math:`\mathbf{g}_i = \partial L/\partial \mathbf{o}_i`):

    .. math::
        \frac{\partial L}{\partial \mathbf{x}_j} = \sum_i w_{ij}\mathbf{g}_i,\quad
        \gamma_{ij} = \frac{m_{ij}}{1-p}\,\mathbf{g}_i^\top\mathbf{x}_j,\quad
        \frac{\partial L}{\partial e_{ij}} = \alpha_{ij}\big(\gamma_{ij} -
        \textstyle\sum_k \alpha_{ik}\gamma_{ik}\big)

    All heads go through one CSR product (:class:`HeadLayout`): :math:`\mathbf{A}\mathbf{X}`
    forward, :math:`\mathbf{A}^\top\mathbf{G}` and a sampled product
    (:func:`torch.sparse.sampled_addmm`, :math:`\gamma`) backward, in place of the
    :math:`(E', H, C)` message tensors and ~15 autograd nodes of the unfused expression.

    Shapes: ``e`` :math:`(E', H)`, ``x`` :math:`(N, H, C)` → :math:`(N_d, H, C)`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, e: Tensor, x: Tensor, layout: HeadLayout, p: float, training: bool
    ) -> Tensor:
        ec = e.reshape(-1).index_select(0, layout.perm)
        m = torch.segment_reduce(ec, "max", offsets=layout.crow)
        ex = (ec - m.index_select(0, layout.row)).exp()
        den = torch.segment_reduce(ex, "sum", offsets=layout.crow) + 1e-16
        alpha = ex / den.index_select(0, layout.row)
        scale = None
        if training and p > 0.0:
            drop = round(p * 65536)
            scale = keep_mask(alpha.shape, p, alpha.device) * (65536 / (65536 - drop))
        w = alpha if scale is None else alpha * scale
        n, h, c = x.shape
        xf = x.reshape(n * h, c)
        out = layout.matrix(w) @ xf
        ctx.save_for_backward(xf, alpha, w, scale)
        ctx.layout, ctx.e_shape, ctx.x_shape = layout, e.shape, x.shape
        return out.view(-1, h, c)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xf, alpha, w, scale = ctx.saved_tensors
        layout: HeadLayout = ctx.layout
        g = grad_out.reshape(-1, xf.size(1))
        grad_x = (layout.transpose(w) @ g).view(ctx.x_shape)
        pattern = layout.matrix(alpha)
        gamma = torch.sparse.sampled_addmm(pattern, g, xf.t(), beta=0.0).values()
        if scale is not None:
            gamma = gamma * scale
        ag = alpha * gamma
        dot = torch.segment_reduce(ag, "sum", offsets=layout.crow)
        grad_ec = ag - alpha * dot.index_select(0, layout.row)
        grad_e = grad_ec.index_select(0, layout.inv).view(ctx.e_shape)
        return grad_e, grad_x, None, None, None


class FusedGATConv(nn.Module):
    r"""Multi-head graph attention (GAT v1 or GATv2), numerically equal to PyG's
    :class:`~torch_geometric.nn.conv.GATConv` / :class:`~torch_geometric.nn.conv.GATv2Conv`
    (the same parameters; PyG's state dict loads into it, see :meth:`load_pyg`).

    For target :math:`i`, head :math:`k`, neighbours :math:`j \in \mathcal{N}(i)\cup\{i\}`:

    .. math::
        e^{k}_{ij} = \begin{cases}
          \mathrm{LeakyReLU}\big(\mathbf{a}_{s}^{k\top}\mathbf{W}^k\mathbf{x}_j +
            \mathbf{a}_{d}^{k\top}\mathbf{W}^k\mathbf{x}_i\big) & \text{v1}\\
          \mathbf{a}^{k\top}\mathrm{LeakyReLU}\big(\mathbf{W}_l^k\mathbf{x}_j +
            \mathbf{W}_r^k\mathbf{x}_i\big) & \text{v2}
        \end{cases},\qquad
        \alpha^k_{ij} = \mathrm{softmax}_j(e^k_{ij}),\qquad
        \mathbf{h}'^{k}_i = \sum_j \mathrm{drop}(\alpha^k_{ij})\,
          \mathrm{drop}_f(\mathbf{W}^k\mathbf{x}_j)

    heads concatenated or averaged, plus a bias. What makes it faster than PyG's layers on
    a fixed graph: the self-loop/sorted structure is built once per ``edge_index``
    (:class:`AttentionGraph`); the projection weight is stored as :math:`(F_{in}, HC)`
    (v2: :math:`[\mathbf{W}_l \Vert \mathbf{W}_r]`, one product for both) and CSR
    inputs are projected with ``embedding_bag`` (:func:`~gnn_attn.models.sparse.project`);
    the attention logits are one small matmul with a block-diagonal matrix of
    :math:`\mathbf{a}`; softmax, dropout and aggregation are one autograd node
    (:class:`_AttendAggregate`); dropout draws 16 random bits per entry.

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
        version: ``v1`` or ``v2``.

    Shapes: ``x`` :math:`(N, F_{in})` (dense or CSR), ``edge_index`` :math:`(2, E)` →
    :math:`(N, HC)` or :math:`(N, C)`; with ``return_attention_weights=True`` also
    ``(edge_index (2, E'), alpha (E', H))``.
    """

    bipartite = True  # forward takes num_dst (see LayerStack._run)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        feat_dropout: float = 0.0,
        version: str = "v1",
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.heads = in_channels, out_channels, heads
        self.concat, self.negative_slope, self.version = concat, negative_slope, version
        self.dropout, self.feat_dropout = dropout, feat_dropout
        self.input_dropout = input_dropout
        hc = heads * out_channels
        n_proj = 1 if version == "v1" else 2
        self.weight = nn.Parameter(torch.empty(in_channels, n_proj * hc))
        if version == "v1":
            self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
            self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
            self.register_parameter("lin_bias", None)
        else:
            self.att = nn.Parameter(torch.empty(1, heads, out_channels))
            self.lin_bias = nn.Parameter(torch.empty(2 * hc))
        self.bias = nn.Parameter(torch.empty(hc if concat else out_channels))
        # head_mask[i, 0, k] = 1 where feature i (of H·C) belongs to head k (see _blocks)
        head_of = torch.arange(hc) // out_channels
        mask = (head_of.view(hc, 1, 1) == torch.arange(heads).view(1, 1, heads)).float()
        self.register_buffer("head_mask", mask, persistent=False)
        self._graphs: GraphCache[AttentionGraph] = GraphCache()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG's initialisation: Glorot for each projection and attention vector, PyG
        ``Linear``'s uniform bias for the v2 projections, zero output bias."""
        hc = self.heads * self.out_channels
        for k in range(self.weight.size(1) // hc):
            glorot(self.weight.data[:, k * hc : (k + 1) * hc])
        for name in ("att_src", "att_dst", "att"):
            if hasattr(self, name):
                glorot(getattr(self, name))
        if self.lin_bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels)
            nn.init.uniform_(self.lin_bias, -bound, bound)
        zeros(self.bias)

    def load_pyg(self, state: dict[str, Tensor]) -> None:
        """Load the state dict of PyG's ``GATConv`` (v1) or ``GATv2Conv`` (v2)."""
        ours = {"bias": state["bias"]}
        if self.version == "v1":
            ours.update(
                weight=state["lin.weight"].t(), att_src=state["att_src"], att_dst=state["att_dst"]
            )
        else:
            ours.update(
                weight=torch.cat([state["lin_l.weight"].t(), state["lin_r.weight"].t()], 1),
                lin_bias=torch.cat([state["lin_l.bias"], state["lin_r.bias"]]),
                att=state["att"],
            )
        self.load_state_dict(ours)

    def pyg_grads(self) -> dict[str, Tensor]:
        """This layer's gradients under PyG's parameter names and shapes."""
        hc = self.heads * self.out_channels
        g = {"bias": self.bias.grad}
        if self.version == "v1":
            g.update(
                {
                    "lin.weight": self.weight.grad.t(),
                    "att_src": self.att_src.grad,
                    "att_dst": self.att_dst.grad,
                }
            )
        else:
            w, b = self.weight.grad, self.lin_bias.grad
            g.update(
                {
                    "lin_l.weight": w[:, :hc].t(),
                    "lin_r.weight": w[:, hc:].t(),
                    "lin_l.bias": b[:hc],
                    "lin_r.bias": b[hc:],
                    "att": self.att.grad,
                }
            )
        return g

    def graph(
        self, edge_index: Tensor, num_nodes: int, num_dst: int | None = None
    ) -> AttentionGraph:
        """The :class:`AttentionGraph` of ``edge_index``, from the layer's
        :class:`~gnn_attn.models.cache.GraphCache`."""
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
        r""":math:`\mathbf{x}\mathbf{W}` :math:`(N, n_{proj} HC)`, with ``input_dropout``
        drawn per head (v2: head :math:`k`'s :math:`\mathbf{W}_l^k` and
        :math:`\mathbf{W}_r^k` see the same copy)."""
        p, h, c = self.input_dropout, self.heads, self.out_channels
        if p == 0.0 or not self.training:
            return project(x, self.weight)
        f, n = self.in_channels, x.size(0)
        if self.version == "v1":
            return project_per_head(x, self.weight.view(f, h, c), h, p, True)
        w = self.weight.view(f, 2, h, c).transpose(1, 2).reshape(f, h, 2 * c)
        out = project_per_head(x, w, h, p, True)
        return out.view(n, h, 2, c).transpose(1, 2).reshape(n, 2 * h * c)

    def scores(self, x: Tensor, g: AttentionGraph) -> tuple[Tensor, Tensor]:
        """Unnormalised attention :math:`e` :math:`(E', H)` and the projected source
        features :math:`(N, H, C)`."""
        n, h, c = x.size(0), self.heads, self.out_channels
        proj = self._project(x)
        if self.version == "v1":
            logits = proj @ self._blocks(self.att_src, self.att_dst)
            e = logits[:, :h].index_select(0, g.src) + logits[:, h:].index_select(0, g.dst)
            return F.leaky_relu(e, self.negative_slope), proj.view(n, h, c)
        proj = proj + self.lin_bias
        x_src, x_dst = proj[:, : h * c], proj[:, h * c :]
        z = x_src.index_select(0, g.src) + x_dst.index_select(0, g.dst)
        e = F.leaky_relu(z, self.negative_slope) @ self._blocks(self.att)
        return e, x_src.reshape(n, h, c)

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
        out = _AttendAggregate.apply(e, x_msg, g.layout(h), self.dropout, self.training)
        out = out.reshape(g.num_dst, h * c) if self.concat else out.mean(dim=1)
        out = out + self.bias
        if return_attention_weights:
            return out, (g.edge_index, edge_softmax(e.detach(), g))
        return out

    def __repr__(self) -> str:
        name = "GATConv" if self.version == "v1" else "GATv2Conv"
        return f"Fused{name}({self.in_channels}, {self.out_channels}, heads={self.heads})"
