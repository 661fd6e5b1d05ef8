"""The fast paths equal the reference ones: fused GAT layer = PyG's layer, CSR input =
dense input, and our dropout has dropout's distribution."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GATConv, GATv2Conv

from gnn_attn.models import GAT, GCN, MLP, attention_ops
from gnn_attn.models.sparse import SparseLinear, dropout, head_copies, project_per_head
from tests.models.pyg_reference import fused_layer, load_pyg, pyg_grads


def random_graph(n: int = 40, f: int = 30, e: int = 160, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, f, generator=g) < 0.1).float() * torch.rand(n, f, generator=g)
    edge_index = torch.randint(0, n, (2, e), generator=g)
    edge_index[:, :5] = torch.arange(5).repeat(2, 1)  # a few existing self-loops
    return x, edge_index


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(("heads", "concat"), [(1, True), (4, True), (3, False)])
def test_fused_layer_equals_pyg(version: str, heads: int, concat: bool) -> None:
    torch.manual_seed(0)
    x, edge_index = random_graph()
    ref_cls = GATConv if version == "v1" else GATv2Conv
    ref = ref_cls(30, 5, heads=heads, concat=concat, dropout=0.6).eval()
    fused = fused_layer(30, 5, heads=heads, concat=concat, dropout=0.6, version=version)
    load_pyg(fused, ref.state_dict())  # the same weights
    fused.eval()
    x_ref = x.clone().requires_grad_()
    x_fused = x.clone().requires_grad_()
    out_ref, (ei_ref, a_ref) = ref(x_ref, edge_index, return_attention_weights=True)
    out_fused, (ei_fused, a_fused) = fused(x_fused, edge_index, return_attention_weights=True)
    assert torch.allclose(out_fused, out_ref, atol=1e-5)

    # same attention per (src, dst) edge, whatever the edge order
    def by_edge(ei, a):
        order = torch.argsort(ei[1] * 1000 + ei[0])
        return ei[:, order], a[order]

    e1, a1 = by_edge(ei_ref, a_ref)
    e2, a2 = by_edge(ei_fused, a_fused)
    assert torch.equal(e1, e2) and torch.allclose(a1, a2, atol=1e-6)
    assert_same_gradients(ref, out_ref, fused, out_fused, atol=1e-5)
    assert torch.allclose(x_fused.grad, x_ref.grad, atol=1e-5)


@pytest.mark.parametrize("concat", [True, False])
def test_gatv2_without_autograd_equals_pyg(monkeypatch: pytest.MonkeyPatch, concat: bool) -> None:
    """Validation's path (no autograd: the edge scores made in blocks of edges, in
    place) gives PyG's outputs; a small block puts this graph's edges in many blocks."""
    monkeypatch.setattr(attention_ops, "EDGE_BLOCK", 320)  # 16 edges of 4 heads × 5
    blocks = []
    index_select = torch.Tensor.index_select

    def counted(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        blocks.append(index.numel())
        return index_select(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", counted)
    torch.manual_seed(0)
    x, edge_index = random_graph()
    ref = GATv2Conv(30, 5, heads=4, concat=concat).eval()
    fused = fused_layer(30, 5, heads=4, concat=concat, dropout=0.0, version="v2").eval()
    load_pyg(fused, ref.state_dict())
    with torch.no_grad():
        out_ref = ref(x, edge_index)
        out_fused = fused(x, edge_index)
        out_csr = fused(x.to_sparse_csr(), edge_index)
    assert torch.allclose(out_fused, out_ref, atol=1e-5)
    assert torch.allclose(out_csr, out_ref, atol=1e-5)
    assert blocks.count(16) >= 2 * 10  # the scores' gathers, block by block (~200 edges)


def assert_same_gradients(ref, out_ref, fused, out_fused, atol: float) -> None:
    """Backpropagate the same random weighting of both outputs; every parameter of PyG's
    layer ``ref`` gets the gradient of the matching parameter of ``fused``."""
    weights = torch.randn_like(out_ref)
    (out_ref * weights).sum().backward()
    (out_fused * weights).sum().backward()
    ours = pyg_grads(fused)
    for name, p in ref.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=atol), name


# small backbones on random_graph()'s 30 features, 4 classes
BACKBONES = [
    lambda: MLP(30, 4, hidden_channels=16),
    lambda: GCN(30, 4, hidden_channels=16),
    lambda: GAT(30, 4, heads=4, version="v1"),
    lambda: GAT(30, 4, heads=4, version="v2"),
    lambda: GAT(30, 4, heads=4, version="v2", impl="pyg"),
]


@pytest.mark.parametrize("make", BACKBONES)
def test_sparse_and_dense_inputs_give_the_same_logits(make) -> None:
    torch.manual_seed(0)
    x, edge_index = random_graph()
    net = make().eval()
    dense = net(x, edge_index)
    sparse = net(x.to_sparse_csr(), edge_index)
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_sparse_linear_gradient_equals_dense() -> None:
    torch.manual_seed(0)
    x, _ = random_graph()
    lin = SparseLinear(30, 7)
    g = torch.randn(40, 7)
    (lin(x) * g).sum().backward()
    dense_grad = lin.weight.grad.clone()
    lin.weight.grad = None
    (lin(x.to_sparse_csr()) * g).sum().backward()
    assert torch.allclose(lin.weight.grad, dense_grad, atol=1e-5)


def test_dropout_keeps_the_expected_value_and_drops_only_stored_values() -> None:
    torch.manual_seed(0)
    x, _ = random_graph(n=200, f=50)
    csr = x.to_sparse_csr()
    p, draws = 0.6, 400
    total = torch.zeros_like(x)
    for _ in range(draws):
        out = dropout(csr, p, training=True)
        assert out.layout == torch.sparse_csr
        assert torch.equal(out.col_indices(), csr.col_indices())  # same sparsity pattern
        vals = out.values()
        kept = vals != 0
        # kept values are scaled by 1 / (1 - p'), p' = p rounded to 1/65536
        assert torch.allclose(vals[kept], csr.values()[kept] / (1 - p), rtol=1e-4)
        total += out.to_dense()
    mean = total / draws
    nz = x != 0
    assert torch.all(mean[~nz] == 0)  # a zero never becomes non-zero
    # E[dropout(x)] = x: relative error of the mean over all stored values
    assert abs(mean[nz].sum() / x[nz].sum() - 1) < 0.02
    kept_share = (dropout(torch.ones(100_000), p, True) != 0).float().mean()
    assert abs(kept_share - (1 - p)) < 0.01
    assert torch.equal(dropout(x, p, training=False), x)


def test_cached_gcn_layer_equals_pyg_and_follows_a_new_graph() -> None:
    """Mini-batches bring a new graph every step: the cached normalisation must follow
    (PyG's ``cached=True`` would keep the first graph)."""
    from torch_geometric.nn import GCNConv

    from gnn_attn.models.gcn import CachedGCNConv

    torch.manual_seed(0)
    ref = GCNConv(30, 5)
    ours = CachedGCNConv(30, 5)
    ours.load_state_dict(ref.state_dict())
    for seed in (0, 1, 2):  # same shapes, different graphs
        x, edge_index = random_graph(seed=seed)
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out_ours = ref(x_ref, edge_index), ours(x_ours, edge_index.clone())
        torch.testing.assert_close(out_ours, out_ref, atol=1e-5, rtol=1e-5)
        out_ref.square().sum().backward()
        out_ours.square().sum().backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fused_layer_follows_a_new_graph_of_the_same_shape(version: str) -> None:
    torch.manual_seed(0)
    layer = fused_layer(30, 5, heads=2, version=version).eval()
    for seed in (0, 1, 2):
        x, edge_index = random_graph(seed=seed)
        fresh = fused_layer(30, 5, heads=2, version=version).eval()
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(layer(x, edge_index.clone()), fresh(x, edge_index))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_bipartite_layer_equals_the_full_layer_on_its_targets(version: str) -> None:
    """``num_dst``: outputs and every gradient equal those of the full layer's first rows
    (edges into the other nodes cannot reach those rows)."""
    torch.manual_seed(0)
    x, edge_index = random_graph()
    full = fused_layer(30, 5, heads=3, version=version)
    part = fused_layer(30, 5, heads=3, version=version)
    part.load_state_dict(full.state_dict())
    x_full, x_part = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_full = full(x_full, edge_index)[:17]
    out_part = part(x_part, edge_index, num_dst=17)
    assert out_part.shape == (17, 15)
    torch.testing.assert_close(out_part, out_full, atol=1e-5, rtol=1e-5)
    out_full.square().sum().backward()
    out_part.square().sum().backward()
    torch.testing.assert_close(x_part.grad, x_full.grad, atol=1e-5, rtol=1e-5)
    for (name, p_full), p_part in zip(full.named_parameters(), part.parameters(), strict=True):
        torch.testing.assert_close(p_part.grad, p_full.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_head_copies_is_the_block_expansion() -> None:
    x, _ = random_graph(n=12, f=6)
    x[3] = 0  # an empty row
    heads = 3
    expanded = head_copies(x.to_sparse_csr(), heads).to_dense()
    ref = torch.zeros(12 * heads, 6 * heads)
    for k in range(heads):
        ref[k::heads, k::heads] = x
    assert torch.equal(expanded, ref)


@pytest.mark.parametrize("sparse", [False, True])
def test_per_head_dropout_is_unbiased_and_independent_across_heads(sparse: bool) -> None:
    torch.manual_seed(0)
    heads, p = 4, 0.5
    x, _ = random_graph(n=40, f=30)
    w = torch.randn(30, heads, 5)
    inp = x.to_sparse_csr() if sparse else x
    exact = x @ w.reshape(30, -1)
    assert torch.allclose(project_per_head(inp, w, heads, p, training=False), exact, atol=1e-5)
    mean = sum(project_per_head(inp, w, heads, p, training=True) for _ in range(2000)) / 2000
    assert (mean - exact).abs().mean() < 0.05 * exact.abs().mean()  # E = x W
    # one input entry, one weight per head: output k is head k's mask of that entry
    ones = torch.ones(4000, 1)
    masks = project_per_head(
        ones.to_sparse_csr() if sparse else ones, torch.ones(1, heads, 1), heads, p, True
    )
    kept = masks != 0
    assert abs(kept.float().mean() - (1 - p)) < 0.02
    both = (kept[:, 0] & kept[:, 1]).float().mean()  # shared masks would give 1 - p
    assert abs(both - (1 - p) ** 2) < 0.03


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_per_head_input_dropout_keeps_the_layer(version: str) -> None:
    """A per-head input dropout that drops nothing (p below 2^-16) leaves outputs and
    gradients as they are (v2 rearranges W_l | W_r per head and back); eval ignores it."""
    torch.manual_seed(0)
    x, edge_index = random_graph()
    plain = fused_layer(30, 5, heads=3, version=version)
    per_head = fused_layer(30, 5, heads=3, version=version, input_dropout=1e-9)
    per_head.load_state_dict(plain.state_dict())
    for inp in (x, x.to_sparse_csr()):
        out_plain, out_head = plain(inp, edge_index), per_head(inp, edge_index)
        torch.testing.assert_close(out_head, out_plain, atol=1e-5, rtol=1e-5)
        out_plain.square().sum().backward()
        out_head.square().sum().backward()
        torch.testing.assert_close(per_head.weight.grad, plain.weight.grad, atol=1e-5, rtol=1e-5)
        plain.zero_grad(), per_head.zero_grad()
    per_head.input_dropout = 0.9
    torch.testing.assert_close(per_head.eval()(x, edge_index), plain.eval()(x, edge_index))


def test_gat_with_per_head_dropout_trains_and_needs_the_fused_layer() -> None:

    torch.manual_seed(0)
    x, edge_index = random_graph()
    net = GAT(30, 4, heads=4, dropout_per_head=True)
    assert net.layers[0].input_dropout == 0.6 and net.layers[1].input_dropout == 0.0
    net(x.to_sparse_csr(), edge_index).square().sum().backward()
    assert net.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"dropout_per_head needs impl=fused"):
        GAT(30, 4, impl="pyg", feat_dropout=0.0, dropout_per_head=True)
