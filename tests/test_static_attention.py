"""The static-attention score (Brody et al. 2022): exactly 1 for GAT whatever its weights
(the theorem), below 1 where rankings depend on the query, and its sampling."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.nn import GATConv

from gnn_attn.analysis.static_attention import group_pairs, static_score
from gnn_attn.data import PlanetoidDataModule, lookup_graph
from gnn_attn.models.gat_conv import FusedGATConv, FusedGATv2Conv

DATA = Path(__file__).resolve().parents[1] / "data" / "planetoid"


@pytest.fixture(scope="module")
def cora(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    dm = PlanetoidDataModule("cora", data_dir=str(DATA), cache_dir=str(cache), verbose=False,
                             sparse_features=False)  # fmt: skip
    dm.setup("fit")
    return dm.data


def attention(layer: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor):
    layer.eval()
    with torch.no_grad():
        _, (ei, alpha) = layer(x, edge_index, return_attention_weights=True)
    return ei, alpha


@pytest.mark.parametrize("make", [FusedGATConv, GATConv], ids=["fused", "pyg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gat_attention_is_static_on_random_weights(cora, make, seed: int) -> None:
    torch.manual_seed(seed)
    layer = make(cora.num_features, 8, heads=4)
    with torch.no_grad():  # larger attention vectors: far from uniform, the ranking matters
        for name in ("att_src", "att_dst"):
            getattr(layer, name).mul_(30)
    score = static_score(*attention(layer, cora.x, cora.edge_index), seed=seed)
    assert score.compared > 10_000
    assert torch.equal(score.per_head, torch.ones(4))  # the theorem, to the last bit


def test_gatv2_attention_is_not_static_on_random_weights(cora) -> None:
    torch.manual_seed(0)
    layer = FusedGATv2Conv(cora.num_features, 8, heads=4)
    with torch.no_grad():
        layer.att.mul_(30)
    score = static_score(*attention(layer, cora.x, cora.edge_index))
    assert (score.per_head < 0.99).all()


def test_gat_is_static_on_dictionary_lookup_and_gatv2_can_follow_the_key() -> None:
    k = 6
    batch = Batch.from_data_list([lookup_graph(torch.randperm(k)) for _ in range(4)])
    torch.manual_seed(0)
    gat = FusedGATConv(2 * k + 1, 16, heads=2)
    assert torch.equal(static_score(*attention(gat, batch.x, batch.edge_index)).per_head,
                       torch.ones(2))  # fmt: skip
    # a GATv2 layer built by hand to attend to the key-value node of the query's key:
    # W_l x_j + W_r x_i holds key_j - key_i per key; a = -1 scores -|mismatch|
    v2 = FusedGATv2Conv(2 * k + 1, k, heads=1, negative_slope=-1.0)  # |z| = LeakyReLU(-1)
    with torch.no_grad():
        v2.weight.zero_()
        v2.lin_bias.zero_()
        v2.weight[:k, :k] = 5 * torch.eye(k)  # W_l: the neighbour's key
        v2.weight[:k, k:] = -5 * torch.eye(k)  # W_r: minus the query's key
        v2.att.fill_(-1.0)
    ei, alpha = attention(v2, batch.x, batch.edge_index)
    score = static_score(ei, alpha)
    assert score.mean < 0.5  # each query puts its own key first: rankings disagree
    into = (ei[1] < k) & (ei[0] >= k)
    top = torch.zeros(k, dtype=torch.long)
    for q in range(k):
        rows = into & (ei[1] == q)
        top[q] = ei[0][rows][alpha[rows, 0].argmax()] - k
    assert top.tolist() == list(range(k))  # the matching key wins for every query


def test_hand_built_cases() -> None:
    # queries 0, 1 share neighbours 2, 3: query 0 prefers 2, query 1 prefers 3
    ei = torch.tensor([[2, 3, 2, 3], [0, 0, 1, 1]])
    opposed = torch.tensor([[0.7], [0.3], [0.2], [0.8]])
    assert float(static_score(ei, opposed).per_head[0]) == 0.0
    same = torch.tensor([[0.7], [0.3], [0.6], [0.4]])
    assert float(static_score(ei, same).per_head[0]) == 1.0
    tied = torch.tensor([[0.5], [0.5], [0.6], [0.4]])
    assert torch.isnan(static_score(ei, tied).per_head[0])  # a tie is neither
    # three queries, three shared neighbours: 3 query pairs × 3 neighbour pairs
    ei3 = torch.tensor([[j for j in (3, 4, 5) for _ in range(3)], [0, 1, 2] * 3])
    alpha = torch.rand(9, 2)
    score = static_score(ei3, alpha)
    assert score.available == 9 and score.compared == 9


def test_group_pairs_enumerates_and_samples_pairs_within_groups() -> None:
    sizes = torch.tensor([3, 1, 4, 2])
    first, second, total = group_pairs(sizes)
    starts = [0, 3, 4, 8]
    expected = {
        (s + a, s + b)
        for s, n in zip(starts, sizes.tolist(), strict=True)
        for a, b in itertools.combinations(range(n), 2)
    }
    assert total == 3 + 0 + 6 + 1
    assert set(zip(first.tolist(), second.tolist(), strict=True)) == expected
    assert len(first) == total
    g = torch.Generator().manual_seed(0)
    f, s, t = group_pairs(sizes, limit=5, generator=g)
    assert t == total and len(f) == 5
    assert set(zip(f.tolist(), s.tolist(), strict=True)) <= expected


def test_sampling_is_seeded_and_close_to_the_full_count(cora) -> None:
    torch.manual_seed(0)
    layer = FusedGATv2Conv(cora.num_features, 8, heads=2)
    with torch.no_grad():
        layer.att.mul_(30)
    ei, alpha = attention(layer, cora.x, cora.edge_index)
    full = static_score(ei, alpha, max_comparisons=10**9)
    assert full.compared == full.available
    a = static_score(ei, alpha, max_comparisons=20_000, seed=5)
    b = static_score(ei, alpha, max_comparisons=20_000, seed=5)
    assert a.compared == 20_000 and torch.equal(a.per_head, b.per_head)
    assert torch.allclose(a.per_head, full.per_head, atol=0.02)
    few = static_score(ei, alpha, max_triples=5_000)  # a subset of the queries
    assert few.query_share < 1 and torch.allclose(few.per_head, full.per_head, atol=0.05)
