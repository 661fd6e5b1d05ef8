"""Backbones that know nothing of the template (plain PyG layers), taking gcn.yaml's
arguments, for the tests that stack them through torch.func."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GINConv, SAGEConv


class SAGE(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 16,
                 num_layers: int = 2, dropout: float = 0.5, activation: str = "relu",
                 residual: bool = False) -> None:  # fmt: skip
        super().__init__()
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(SAGEConv(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(F.dropout(x, self.dropout, self.training), edge_index)
            x = F.relu(x) if i < len(self.convs) - 1 else x
        return x


class GIN(SAGE):
    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 16,
                 num_layers: int = 2, dropout: float = 0.5, activation: str = "relu",
                 residual: bool = False) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, hidden_channels, num_layers, dropout)
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(
            GINConv(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b)), train_eps=True)
            for a, b in itertools.pairwise(sizes)
        )


class InPlaceSum(SAGE):
    """Writes into a tensor it made without the member axis: torch.func cannot batch it."""

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.convs[0](x, edge_index)
        out = torch.zeros(h.shape)
        out.index_add_(0, edge_index[1], h[edge_index[0]])
        return self.convs[1](F.relu(out), edge_index)


class DropEdge(SAGE):
    """Drops edges in training: a shape drawn at random, which vmap cannot batch."""

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        from torch_geometric.utils import dropout_edge

        if self.training:
            edge_index, _ = dropout_edge(edge_index, p=0.2)
        return super().forward(x, edge_index)


class Normed(SAGE):
    """BatchNorm between its layers: running statistics that change as it trains."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 16,
                 num_layers: int = 2, dropout: float = 0.5, activation: str = "relu",
                 residual: bool = False) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, hidden_channels, num_layers, dropout)
        self.norm = nn.BatchNorm1d(hidden_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.norm(F.relu(self.convs[0](x, edge_index)))
        return self.convs[1](h, edge_index)


class Lazy(SAGE):
    """A lazy first layer (in_channels=-1): its size is known only after a forward."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 16,
                 num_layers: int = 2, dropout: float = 0.5, activation: str = "relu",
                 residual: bool = False) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, hidden_channels, num_layers, dropout)
        self.convs[0] = SAGEConv(-1, hidden_channels)
