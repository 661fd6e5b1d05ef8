"""Graph convolutional network (Kipf & Welling, 2017) on PyG's :class:`GCNConv`."""

from __future__ import annotations

from torch_geometric.nn import GCNConv

from gnn_attn.models.sparse import sparse_aware
from gnn_attn.models.stack import LayerStack


class GCN(LayerStack):
    r"""GCN with the symmetric normalised propagation of Kipf & Welling.

    .. math::
        \mathbf{H}^{(l+1)} = \sigma\big(\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}
        \hat{\mathbf{D}}^{-1/2}\,\mathrm{drop}_p(\mathbf{H}^{(l)})\,\mathbf{W}^{(l)}\big),
        \qquad \hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}

    The normalised adjacency is computed once and cached (``cached=True``): the setting
    is transductive, the graph never changes.

    Args:
        in_channels: input features :math:`F_{in}`.
        out_channels: classes :math:`C`.
        hidden_channels: width of every hidden layer (default 16, the paper's).
        num_layers: number of graph convolutions (default 2).
        dropout, activation, residual: see :class:`LayerStack`.

    Shapes: ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)` → :math:`(N, C)`.
    """

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


def _gcn_conv(d_in: int, d_out: int) -> GCNConv:
    conv = GCNConv(d_in, d_out, cached=True)
    conv.lin = sparse_aware(conv.lin)  # same weights; also takes CSR features
    return conv
