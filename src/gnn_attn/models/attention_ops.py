"""The attention operations GAT and GATv2 share: the graph with self-loops in CSR order,
all heads' attention as one sparse matrix, and softmax + dropout + aggregation as one
autograd node with its backward written out."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_attn.models.sparse import dropout_scale

EDGE_BLOCK = 1 << 18  # floats per block of :func:`dynamic_scores` without autograd (1 MiB)


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


def dynamic_scores(
    x_src: Tensor, x_dst: Tensor, att: Tensor, graph: AttentionGraph, negative_slope: float
) -> Tensor:
    r"""GATv2's edge scores without autograd (validation, test):

    .. math::
        e^k_{ij} = \mathbf{a}^{k\top}\mathrm{LeakyReLU}\big(\mathbf{x}^k_{s,j} +
            \mathbf{x}^k_{d,i}\big)

    for every edge :math:`j \to i` of ``graph``. The :math:`(E', K, C)` sums are made
    in blocks of edges, in place, so that each block stays in the CPU's cache (the
    validation of ten stacked GATv2 on CiteSeer, where the whole tensor is 19 MB: 52–59 →
    30–31 ms; the same values as training's path, a product and a sum per head). On a
    GPU one block.

    Shapes: ``x_src``, ``x_dst`` :math:`(N, KC)`, ``att`` :math:`(K, C)` → :math:`(E', K)`.
    """
    k, c = att.shape
    n_edges = graph.src.numel()
    step = max(1, n_edges) if x_src.is_cuda else max(16, EDGE_BLOCK // (k * c))
    out = x_src.new_empty(n_edges, k)
    for start in range(0, n_edges, step):
        src, dst = graph.src[start : start + step], graph.dst[start : start + step]
        z = x_src.index_select(0, src)
        z += x_dst.index_select(0, dst)
        F.leaky_relu_(z, negative_slope)
        torch.sum(z.view(-1, k, c).mul_(att), -1, out=out[start : start + step])
    return out


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


def attention_scale(layout: HeadLayout, p: float, training: bool) -> Tensor | None:
    """Dropout of the attention weights of ``layout``: each weight's :math:`m_{ij}/(1-p)`
    in CSR order (:func:`~gnn_attn.models.sparse.dropout_scale`), or ``None`` when not
    training or :math:`p = 0`."""
    if not training or p == 0.0:
        return None
    return dropout_scale(layout.perm.shape, p, layout.perm.device)


class AttendAggregate(torch.autograd.Function):
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

    Shapes: ``e`` :math:`(E', H)`, ``x`` :math:`(N, H, C)`, ``scale`` (the dropout's
    :math:`m_{ij}/(1-p)` in the layout's CSR order, :func:`attention_scale`, or ``None``
    for no dropout) :math:`(E'H)` → :math:`(N_d, H, C)`.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, e: Tensor, x: Tensor, layout: HeadLayout, scale: Tensor | None
    ) -> Tensor:
        ec = e.reshape(-1).index_select(0, layout.perm)
        m = torch.segment_reduce(ec, "max", offsets=layout.crow)
        ex = (ec - m.index_select(0, layout.row)).exp()
        den = torch.segment_reduce(ex, "sum", offsets=layout.crow) + 1e-16
        alpha = ex / den.index_select(0, layout.row)
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
        return grad_e, grad_x, None, None
