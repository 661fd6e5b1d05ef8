"""Graph convolutional network (Kipf & Welling, 2017) on PyG's :class:`GCNConv`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from gnn_attn.models.cache import GraphCache
from gnn_attn.models.sparse import sparse_aware
from gnn_attn.models.stack import LayerStack


class GCN(LayerStack):
    r"""GCN with the symmetric normalised propagation of Kipf & Welling.

    .. math::
        \mathbf{H}^{(l+1)} = \sigma\big(\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}
        \hat{\mathbf{D}}^{-1/2}\,\mathrm{drop}_p(\mathbf{H}^{(l)})\,\mathbf{W}^{(l)}\big),
        \qquad \hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}

    The normalised adjacency is computed once per graph and cached (full batch: once per
    run; mini-batches: once per batch, shared by the layers).

    Args:
        in_channels: input features :math:`F_{in}`.
        out_channels: classes :math:`C`.
        hidden_channels: width of every hidden layer (default 16, the paper's).
        num_layers: number of graph convolutions (default 2).
        dropout, activation, residual: see :class:`LayerStack`.

    Shapes: ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)` → :math:`(N, C)`.
    """

    trims = False  # the degree normalisation reads every edge of the batch

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 16,
        num_layers: int = 2,
        dropout: float = 0.5,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__(dropout, activation, residual)
        self._build_uniform(in_channels, out_channels, hidden_channels, num_layers, _gcn_conv)


class CachedGCNConv(GCNConv):
    r"""PyG's :class:`GCNConv` (same parameters and output) whose normalisation
    :math:`\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}` is cached per
    ``edge_index`` tensor. PyG's ``cached=True`` keeps the first graph forever, which
    would be wrong for mini-batches; here a new graph is normalised when it comes. The
    cache is a :class:`~gnn_attn.models.cache.GraphCache`.

    Shapes: ``x`` :math:`(N, F_{in})` (dense or CSR), ``edge_index`` :math:`(2, E)` →
    :math:`(N, F_{out})`.
    """

    groups = 1  # equal groups of channels propagated apart (a stack: one per member)

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, normalize=False, **kwargs)
        self.lin = sparse_aware(self.lin)  # same weights; also takes CSR features
        self._norms: GraphCache[tuple[Tensor, Tensor]] = GraphCache()
        self._transposes: GraphCache[Tensor] = GraphCache()  # adjacency values → A^T

    def normalized(self, edge_index: Tensor, num_nodes: int) -> Tensor:
        r"""The normalised adjacency :math:`\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}
        \hat{\mathbf{D}}^{-1/2}` as a CSR matrix :math:`(N, N)` (rows: targets), built
        once per ``edge_index``; its transpose is kept for :meth:`message_and_aggregate`."""

        def build() -> tuple[Tensor, Tensor]:
            ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True, dtype=torch.float32)
            shape = (num_nodes, num_nodes)
            a = torch.sparse_coo_tensor(ei.flip(0), w, shape).coalesce().to_sparse_csr()
            at = torch.sparse_coo_tensor(ei, w, shape).coalesce().to_sparse_csr()
            return a, at

        a, at = self._norms.get(edge_index, (num_nodes,), build)
        self._transposes.get(a.values(), (), lambda: at)
        return a

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        """PyG's ``GCNConv.forward`` on the cached normalised adjacency: ``lin``, then
        ``propagate`` (:meth:`message_and_aggregate`), plus the bias."""
        return super().forward(x, self.normalized(edge_index, x.size(0)))

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        r""":math:`\hat{\mathbf{A}}_{norm}\mathbf{X}` as one CSR product (:class:`Propagate`),
        for any number of channels (a stack of members propagates all of theirs at once)."""
        at = self._transposes.get(adj_t.values(), (), lambda: adj_t.t().to_sparse_csr())
        return Propagate.apply(adj_t, at, x, self.groups)


class Propagate(torch.autograd.Function):
    r""":math:`\mathbf{A}\mathbf{Z}` for a constant CSR :math:`\mathbf{A}` with its
    transpose given (the gradient is :math:`\mathbf{A}^\top\mathbf{G}`, no conversion of
    formats on the way back: nothing syncs with the host, as a CUDA graph needs).

    With ``groups`` :math:`S > 1` the :math:`D` columns are :math:`S` equal groups (a
    stack's members), multiplied one group at a time: the sparse product's rounding
    depends on the width, so each member's columns round as in its lone layer.

    Shapes: ``a``, ``at`` :math:`(N, N)`, ``z`` :math:`(N, D)` → :math:`(N, D)`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: Tensor, at: Tensor, z: Tensor, groups: int = 1
    ) -> Tensor:
        ctx.at, ctx.groups = at, groups
        return _grouped_product(a, z, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor, None]:  # type: ignore[override]
        return None, None, _grouped_product(ctx.at, grad, ctx.groups), None


def _grouped_product(a: Tensor, z: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return a @ z.contiguous()
    return torch.cat([a @ part.contiguous() for part in z.chunk(groups, dim=1)], dim=1)


def _gcn_conv(d_in: int, d_out: int) -> GCNConv:
    return CachedGCNConv(d_in, d_out)
