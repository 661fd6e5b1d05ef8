"""The neighbour sampler: exactness with all neighbours, fan-out limits, DDP sharding."""

from __future__ import annotations

import functools
import operator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn.models import GAT as PyGGAT
from torch_geometric.nn.models import GraphSAGE

from gnn_attn.data import PlanetoidDataModule
from gnn_attn.data.sampler import NeighborBatches, NeighborSampler, gather_rows, receptive_field
from gnn_attn.models import GAT, MLP

DATA = Path(__file__).resolve().parents[2] / "data" / "planetoid"


@pytest.fixture(scope="module")
def cora(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    dm = PlanetoidDataModule("cora", data_dir=str(DATA), cache_dir=str(cache), verbose=False)
    dm.setup("fit")
    return dm.data


def test_gather_rows_of_csr_equals_dense_rows(cora) -> None:
    idx = torch.tensor([5, 0, 2707, 5, 100])
    rows = gather_rows(cora.x, idx)
    assert rows.layout == torch.sparse_csr
    assert torch.equal(rows.to_dense(), cora.x.to_dense()[idx])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_all_neighbours_give_the_full_graph_logits(cora, version: str) -> None:
    """Attention normalises over each target's in-edges, all present with fan-out -1:
    mini-batch evaluation of GAT is exact."""
    torch.manual_seed(0)
    net = GAT(cora.x.size(1), 7, version=version).eval()
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = cora.val_mask.nonzero().view(-1)[:200]
    gen = torch.Generator().manual_seed(0)
    n_id, edge_index, _, _ = sampler.sample(seeds, [-1, -1], gen)
    with torch.no_grad():
        full = net(cora.x, cora.edge_index)[seeds]
        batch = net(gather_rows(cora.x, n_id), edge_index)[: seeds.numel()]
    torch.testing.assert_close(batch, full, atol=1e-5, rtol=1e-5)


def test_fanout_limits_and_structure(cora) -> None:
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = torch.tensor([0, 1, 2, 1358, 2000])
    n_id, ei, nodes, edges = sampler.sample(seeds, [3, 2], torch.Generator().manual_seed(1))
    assert sum(nodes) == n_id.numel() and sum(edges) == ei.size(1) and nodes[0] == 5
    assert torch.equal(n_id[: seeds.numel()], seeds)  # seeds first
    assert n_id.unique().numel() == n_id.numel()  # each node once
    src, dst = n_id[ei[0]], n_id[ei[1]]  # back to global ids
    graph = set(zip(cora.edge_index[0].tolist(), cora.edge_index[1].tolist(), strict=True))
    assert all((s, d) in graph for s, d in zip(src.tolist(), dst.tolist(), strict=True))
    in_deg = torch.bincount(ei[1], minlength=n_id.numel())
    assert int(in_deg[: seeds.numel()].max()) <= 3
    assert int(in_deg[seeds.numel() :].max()) <= 2
    full_deg = torch.bincount(cora.edge_index[1], minlength=cora.num_nodes)
    # a seed with at most 3 neighbours keeps all of them
    for i, s in enumerate(seeds.tolist()):
        assert int(in_deg[i]) == min(3, int(full_deg[s]))


def test_sampling_is_seeded(cora) -> None:
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = cora.train_mask.nonzero().view(-1)
    a = sampler.sample(seeds, [5, 5], torch.Generator().manual_seed(3))
    b = sampler.sample(seeds, [5, 5], torch.Generator().manual_seed(3))
    c = sampler.sample(seeds, [5, 5], torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (a[1].shape == c[1].shape and torch.equal(a[1], c[1]))


def _seeds_of(batches: NeighborBatches) -> list[int]:
    return [s for b in batches for s in b.n_id[: b.batch_size].tolist()]


def test_ddp_shards_cover_the_seeds_once(cora) -> None:
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = cora.val_mask.nonzero().view(-1)  # 500

    def shard(rank: int, pad: bool, shuffle: bool) -> NeighborBatches:
        return NeighborBatches(
            cora, sampler, seeds, [2, 2], 64, shuffle, 0, lambda: 0, rank, 3, pad
        )

    # evaluation: disjoint shares that together are the split, each seed once
    shares = [_seeds_of(shard(r, pad=False, shuffle=False)) for r in range(3)]
    assert sorted(functools.reduce(operator.iadd, shares, [])) == sorted(seeds.tolist())
    # training: same batch count on every rank (DDP steps together), all seeds covered
    loaders = [shard(r, pad=True, shuffle=True) for r in range(3)]
    assert len({len(list(iter(lo))) for lo in loaders}) == 1
    assert {len(lo) for lo in loaders} == {len(list(iter(loaders[0])))}
    seen = functools.reduce(operator.iadd, (_seeds_of(lo) for lo in loaders), [])
    assert set(seen) == set(seeds.tolist())


@pytest.mark.parametrize(
    "make",
    [
        lambda f, c: GAT(f, c, version="v1", num_layers=3, residual=True),
        lambda f, c: GAT(f, c, version="v2"),
        lambda f, c: GAT(f, c, version="v2", impl="pyg", feat_dropout=0.0),
        lambda f, c: MLP(f, c, num_layers=3),
        lambda f, c: GAT(f, c, readout="linear", hidden_channels=16, heads=2),
    ],
)
def test_layer_trimming_keeps_the_seeds_logits(cora, make) -> None:
    """Trimmed layers (only what later layers read) give the seeds the same logits."""
    torch.manual_seed(0)
    net = make(cora.x.size(1), 7).eval()
    hops = len(net.layers)
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = cora.train_mask.nonzero().view(-1)
    n_id, ei, nodes, edges = sampler.sample(seeds, [4] * hops, torch.Generator().manual_seed(0))
    x = gather_rows(cora.x, n_id)
    with torch.no_grad():
        whole = net(x, ei)[: seeds.numel()]
        trimmed = net(x, ei, num_sampled_nodes_per_hop=nodes, num_sampled_edges_per_hop=edges)
    assert trimmed.size(0) == seeds.numel()
    torch.testing.assert_close(trimmed, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_receptive_field_gives_the_whole_graph_loss_and_gradients(cora, version: str) -> None:
    """Full-batch GAT trains on the training nodes' receptive field: same loss, same
    gradient for every parameter as on the whole graph."""
    torch.manual_seed(0)
    kw = dict(version=version, dropout=0.0, attn_dropout=0.0, feat_dropout=0.0)
    whole, field = GAT(cora.x.size(1), 7, **kw), GAT(cora.x.size(1), 7, **kw)
    field.load_state_dict(whole.state_dict())
    seeds = cora.train_mask.nonzero().view(-1)
    batch = receptive_field(cora, seeds, whole.receptive_hops)
    assert batch.num_nodes < cora.num_nodes  # less work
    loss_whole = F.cross_entropy(whole(cora.x, cora.edge_index)[seeds], cora.y[seeds])
    logits = field(
        batch.x,
        batch.edge_index,
        num_sampled_nodes_per_hop=batch.num_sampled_nodes,
        num_sampled_edges_per_hop=batch.num_sampled_edges,
    )
    loss_field = F.cross_entropy(logits, batch.y[: seeds.numel()])
    torch.testing.assert_close(loss_field, loss_whole)
    loss_whole.backward()
    loss_field.backward()
    for (name, p_whole), p_field in zip(whole.named_parameters(), field.parameters(), strict=True):
        torch.testing.assert_close(p_field.grad, p_whole.grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "make", [lambda f, c: GraphSAGE(f, 16, 2, c), lambda f, c: PyGGAT(f, 8, 2, c)]
)
def test_pyg_models_trim_our_batches_exactly(cora, make) -> None:
    """PyG's own models take the hop sizes the classifier passes (PyG's convention):
    on our sampled batches the seeds' logits are those of the untrimmed pass."""
    torch.manual_seed(0)
    net = make(cora.x.size(1), 7).eval()
    sampler = NeighborSampler(cora.edge_index, cora.num_nodes)
    seeds = cora.train_mask.nonzero().view(-1)
    n_id, ei, nodes, edges = sampler.sample(seeds, [4, 4], torch.Generator().manual_seed(0))
    x = gather_rows(cora.x, n_id).to_dense()
    with torch.no_grad():
        whole = net(x, ei)[: seeds.numel()]
        trimmed = net(x, ei, num_sampled_nodes_per_hop=nodes, num_sampled_edges_per_hop=edges)
    torch.testing.assert_close(trimmed[: seeds.numel()], whole, atol=1e-5, rtol=1e-5)
