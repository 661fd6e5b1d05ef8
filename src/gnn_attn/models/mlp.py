"""Multi-layer perceptron: the graph-blind baseline of the GCN and GAT papers."""

from __future__ import annotations

from gnn_attn.models.sparse import SparseLinear
from gnn_attn.models.stack import LayerStack


class MLP(LayerStack):
    r"""A node-wise MLP that ignores the edges.

    .. math::
        \mathbf{H}^{(l+1)} = \sigma\big(\mathrm{drop}_p(\mathbf{H}^{(l)})\,\mathbf{W}^{(l)}
        + \mathbf{b}^{(l)}\big)

    Args:
        in_channels: input features :math:`F_{in}`.
        out_channels: classes :math:`C`.
        hidden_channels: width of every hidden layer (default 64).
        num_layers: number of linear layers (default 2).
        dropout, activation, residual: see :class:`LayerStack`.

    Shapes: ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)` (unused) →
    :math:`(N, C)`.
    """

    graph_layers = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 2,
        dropout: float = 0.5,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__(dropout, activation, residual)
        self._build_uniform(in_channels, out_channels, hidden_channels, num_layers, SparseLinear)
