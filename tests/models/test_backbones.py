"""Backbones: shapes, per-layer options, embeddings and attention weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import SAGEConv
from torch_geometric.utils import scatter

from gnn_attn.models import GAT, GCN, MLP
from gnn_attn.models.module import first_layer

N, F, C = 12, 5, 3


@pytest.fixture
def graph() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(N, F)
    src = torch.arange(N)
    dst = (src + 1) % N
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    return x, edge_index


@pytest.mark.parametrize(
    ("net", "embed_dim"),
    [
        (MLP(F, C, hidden_channels=7), 7),
        (GCN(F, C, hidden_channels=6, num_layers=3, residual=True), 6),
        (GAT(F, C, hidden_channels=4, heads=3), 12),
        (GAT(F, C, hidden_channels=4, heads=3, concat=False, version="v2"), 4),
        (GAT(F, C, hidden_channels=4, num_layers=3, heads=[2, 4], concat=[True, False]), 4),
    ],
)
def test_shapes(graph, net, embed_dim: int) -> None:
    x, edge_index = graph
    net.eval()
    assert net(x, edge_index).shape == (N, C)
    assert net.embed(x, edge_index).shape == (N, embed_dim)


def test_gat_layer_widths_follow_heads_and_concat() -> None:
    net = GAT(F, C, hidden_channels=8, num_layers=3, heads=[8, 2], concat=[True, False])
    assert net.dims == [F, 64, 8, C]
    assert [layer.heads for layer in net.layers] == [8, 2, 1]


def test_attention_sums_to_one_per_node_and_head(graph) -> None:
    x, edge_index = graph
    for version in ("v1", "v2"):
        net = GAT(F, C, heads=4, out_heads=2, version=version).eval()
        _, layers = net(x, edge_index, return_attention=True)
        assert len(layers) == 2
        for (ei, alpha), heads in zip(layers, (4, 2), strict=True):
            assert ei.size(1) == edge_index.size(1) + N  # self-loops added
            assert alpha.shape == (ei.size(1), heads)
            sums = scatter(alpha, ei[1], dim=0, dim_size=N, reduce="sum")
            assert torch.allclose(sums, torch.ones(N, heads), atol=1e-5)


def test_attention_comes_from_the_same_forward(graph) -> None:
    x, edge_index = graph
    net = GAT(F, C, heads=2, residual=True).eval()
    logits, layers = net(x, edge_index, return_attention=True)
    assert torch.equal(logits, net(x, edge_index))  # one loop: the same computation
    assert len(layers) == len(net.layers)


def test_bad_hyperparameters_are_value_errors_naming_the_argument() -> None:
    """Constructors speak of their own arguments; the run names the config key."""
    with pytest.raises(ValueError, match=r"^heads must be an integer ≥ 1 \(got 0\)"):
        GAT(F, C, heads=0)
    with pytest.raises(ValueError, match=r"^heads has 2 entries .* 3 hidden layers"):
        GAT(F, C, num_layers=4, heads=[1, 2])
    with pytest.raises(ValueError, match=r"^version 'v3' is unknown"):
        GAT(F, C, version="v3")
    with pytest.raises(ValueError, match=r"^activation 'nope' is unknown"):
        GCN(F, C, activation="nope")
    with pytest.raises(ValueError, match=r"^hidden_channels must be an integer ≥ 1"):
        MLP(F, C, hidden_channels=0)
    with pytest.raises(TypeError, match=r"^residual must be true or false"):
        MLP(F, C, residual="yes")


def test_first_layer_is_defined_for_any_backbone() -> None:
    """weight_decay_on=first_layer: a named first_layer, else the first submodule with
    parameters in registration order, looked for inside containers."""

    class Sage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()  # no parameters: passed over
            self.conv1 = SAGEConv(4, 8)
            self.conv2 = SAGEConv(8, 3)

    class Listed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList([nn.Identity(), nn.Linear(4, 8), nn.Linear(8, 3)])

    sage, listed, linear = Sage(), Listed(), nn.Linear(4, 3)
    assert first_layer(sage) is sage.conv1  # the whole SAGEConv, both its projections
    assert first_layer(listed) is listed.convs[1]
    assert first_layer(linear) is linear
    gcn = GCN(4, 3)
    assert first_layer(gcn) is gcn.layers[0]

    class Named(Sage):
        first_layer = property(lambda self: self.conv2)

    class WithEps(Sage):
        def __init__(self) -> None:
            super().__init__()
            self.eps = nn.Parameter(torch.zeros(1))  # the backbone's own, not a layer

    named, eps = Named(), WithEps()
    assert first_layer(named) is named.conv2
    assert first_layer(eps) is eps.conv1
