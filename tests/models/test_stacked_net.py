"""A stack of S backbones computes what S lone backbones compute: same outputs and
gradients for every backbone and layout, and each member's state dict loads into the
lone class."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from gnn_attn.models import GAT, GCN, MLP
from gnn_attn.models.attention_ops import AttentionGraph
from gnn_attn.models.gat_conv import FusedGATv2Conv
from gnn_attn.models.gcn import CachedGCNConv
from gnn_attn.models.stack import LayerStack
from gnn_attn.models.stacked import StackedNet, why_not_stackable

N, F, C = 60, 30, 4
BACKBONES: dict[str, Callable[[], LayerStack]] = {
    "mlp": lambda: MLP(F, C, 16, dropout=0.0),
    "gcn": lambda: GCN(F, C, 16, dropout=0.0),
    "gat": lambda: GAT(F, C, 8, heads=3, dropout=0.0, attn_dropout=0.0, feat_dropout=0.0),
    "gatv2": lambda: GAT(F, C, 8, heads=3, version="v2", dropout=0.0, attn_dropout=0.0),
    "gat_3_layers_mean": lambda: GAT(
        F,
        C,
        8,
        num_layers=3,
        heads=[2, 4],
        concat=False,
        out_heads=2,
        dropout=0.0,
        attn_dropout=0.0,
    ),
}


def graph() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(N, F, generator=gen) < 0.2).float()
    return x, torch.randint(0, N, (2, 300), generator=gen)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("sparse", [False, True])
def test_member_equals_its_lone_backbone(name: str, sparse: bool) -> None:
    make = BACKBONES[name]
    lones = []
    for seed in range(3):
        torch.manual_seed(seed)
        lones.append(make())
    stack = StackedNet(lones)
    x, edge_index = graph()
    x_in = x.to_sparse_csr() if sparse else x
    out = stack(x_in, edge_index)
    assert out.shape == (N, 3, C)
    out.pow(2).sum().backward()
    for s, lone in enumerate(lones):
        ref = lone(x_in, edge_index)
        ref.pow(2).sum().backward()
        assert torch.equal(out[:, s], ref)  # bit for bit: the lone code, the lone rounding
        for i, layer in enumerate(stack.layers):
            grads = layer.member_state(s, grad=True)
            for pname, p in lone.layers[i].named_parameters():
                assert torch.equal(grads[pname], p.grad), pname
        copy = make()
        copy.load_state_dict(stack.member_state_dict(s))  # strict: every key, every shape
        torch.testing.assert_close(copy(x_in, edge_index), ref, atol=1e-6, rtol=1e-6)


def test_members_draw_their_own_dropout_masks() -> None:
    torch.manual_seed(0)
    lone = MLP(F, C, 16, dropout=0.5)
    stack = StackedNet([lone, lone])  # the same weights twice
    x, edge_index = graph()
    out = stack(x.to_sparse_csr(), edge_index)
    assert not torch.allclose(out[:, 0], out[:, 1])  # different masks, different outputs
    stack.eval()
    out = stack(x.to_sparse_csr(), edge_index)
    torch.testing.assert_close(out[:, 0], out[:, 1])


def test_what_does_not_stack_says_why() -> None:
    assert why_not_stackable(GAT(F, C, impl="pyg", feat_dropout=0.0)) is not None
    assert "residual" in why_not_stackable(GCN(F, C, residual=True))
    assert "dropout_per_head" in why_not_stackable(GAT(F, C, dropout_per_head=True))
    assert "not one of" in why_not_stackable(torch.nn.Linear(F, C))
    with pytest.raises(ValueError, match="residual"):
        StackedNet([MLP(F, C, residual=True)])


class TanhScoreGATv2(FusedGATv2Conv):
    """A fork of the lone GATv2 layer: tanh in place of LeakyReLU in the score."""

    def scores(self, proj: torch.Tensor, g: AttentionGraph) -> tuple[torch.Tensor, torch.Tensor]:
        n, h, c = proj.size(0), self.heads, self.out_channels
        x_src, x_dst = proj[:, : h * c], proj[:, h * c :]
        z = x_src.index_select(0, g.src) + x_dst.index_select(0, g.dst)
        return (torch.tanh(z).view(-1, h, c) * self.att).sum(-1), x_src.reshape(n, h, c)


class DoubledGCNConv(CachedGCNConv):
    """A fork of the lone GCN propagation: twice the normalised sum."""

    def message_and_aggregate(self, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().message_and_aggregate(adj_t, x)


@pytest.mark.parametrize(("name", "fork"), [("gatv2", TanhScoreGATv2), ("gcn", DoubledGCNConv)])
def test_an_edit_of_a_lone_layer_is_stacked_with_it(name: str, fork: type) -> None:
    """A subclass that changes the lone layer's math (the GATv2 score, GCN's
    propagation) stacks with its change: each member is its edited lone backbone."""
    x, edge_index = graph()
    lones, plain = [], []  # each seed's lone backbone, edited; its unedited output
    for seed in range(3):
        torch.manual_seed(seed)
        net = BACKBONES[name]()
        plain.append(net(x, edge_index).detach())
        for layer in net.layers:
            layer.__class__ = fork
        lones.append(net)
    out = StackedNet(lones)(x, edge_index)
    for s, lone in enumerate(lones):
        ref = lone(x, edge_index)
        assert not torch.allclose(ref, plain[s])  # the edit changes the lone output
        assert torch.equal(out[:, s], ref)  # and the stack computes the edited one
