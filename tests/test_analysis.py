"""The per-node quantities behind the pictures, on tiny hand-made graphs."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.utils import degree

from gnn_attn.analysis.graph import (
    attended_degree,
    attention_entropy,
    degree_buckets,
    self_attention_share,
    uniform_entropy,
    wilson_interval,
)
from gnn_attn.callbacks import AttentionAnalysis
from gnn_attn.callbacks.tsne import pick_nodes
from gnn_attn.data import node_degree


def star() -> torch.Tensor:
    """Node 0 linked to 1, 2, 3 (both directions), node 4 isolated, a self-loop on 3."""
    src = torch.tensor([0, 1, 0, 2, 0, 3, 3])
    dst = torch.tensor([1, 0, 2, 0, 3, 0, 3])
    return torch.stack([src, dst])


def test_degrees_ignore_self_loops() -> None:
    assert node_degree(star(), 5).tolist() == [3, 1, 1, 1, 0]


def test_degree_buckets_and_accuracy() -> None:
    deg = torch.tensor([0, 1, 1, 1, 2, 5, 9, 3])
    correct = torch.tensor([True, True, False, False, True, True, False, True])
    rows = degree_buckets(deg, correct, max_bucket=3)
    assert [r["bucket"] for r in rows] == ["0", "1", "2", "≥3"]
    assert [r["count"] for r in rows] == [1, 3, 1, 3]
    assert [r["correct"] for r in rows] == [1, 1, 1, 2]
    assert rows[1]["accuracy"] == 1 / 3 and rows[3]["accuracy"] == 2 / 3
    assert sum(r["count"] for r in rows) == len(deg)


def test_uniform_attention_has_uniform_entropy() -> None:
    # self-loops + star edges; uniform attention over each node's incoming edges
    ei = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 1, 2, 3, 4], [0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4]])
    n = 5
    counts = torch.bincount(ei[1], minlength=n).float()
    alpha = (1.0 / counts[ei[1]]).unsqueeze(1).repeat(1, 2)  # 2 heads
    sums = torch.zeros(n, 2).index_add_(0, ei[1], alpha)
    assert torch.allclose(sums, torch.ones(n, 2))  # attention per node sums to 1 per head
    ent = attention_entropy(ei, alpha, n)
    attended = attended_degree(ei, n)
    assert attended.tolist() == [4, 2, 2, 2, 1]  # neighbours + self-loop
    assert torch.allclose(ent[:, 0], uniform_entropy(attended), atol=1e-6)
    assert math.isclose(float(uniform_entropy(attended)[0]), math.log(4), rel_tol=1e-6)
    assert float(ent[4, 1]) == 0.0  # an isolated node attends only to itself


def test_uniform_attention_without_self_loops_is_uniform() -> None:
    """The baseline counts the edges actually attended: a layer without self-loops that
    attends uniformly reads as uniform (ratio 1), and has no self share (not NaN)."""
    ei = torch.tensor([[1, 2, 3, 0, 0, 0], [0, 0, 0, 1, 2, 3]])
    alpha = (1.0 / torch.bincount(ei[1], minlength=4).float()[ei[1]]).unsqueeze(1)
    ent = attention_entropy(ei, alpha, 4)
    uniform = uniform_entropy(attended_degree(ei, 4))
    assert math.isclose(float(ent[0, 0] / uniform[0]), 1.0, rel_tol=1e-6)
    assert self_attention_share(ei, alpha) is None


def test_peaked_attention_has_zero_entropy_and_self_share() -> None:
    ei = torch.tensor([[0, 1, 1], [0, 0, 1]])
    alpha = torch.tensor([[1.0], [0.0], [1.0]])
    assert torch.allclose(attention_entropy(ei, alpha, 2), torch.zeros(2, 1))
    assert float(self_attention_share(ei, alpha)) == 1.0


def test_wilson_interval_covers_the_proportion_and_stays_in_range() -> None:
    low, high = wilson_interval(0, 12)
    assert low == 0.0 and 0.24 < high < 0.25  # 12 isolated nodes, none right: still unsure
    low, high = wilson_interval(12, 12)
    assert high == pytest.approx(1.0) and 0.75 < low < 0.76
    low, high = wilson_interval(300, 367)
    assert low < 300 / 367 < high and high - low < 0.09  # a big bucket: a tight interval
    rows = degree_buckets(torch.tensor([1, 1, 2]), torch.tensor([True, False, True]), 2)
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rows)


def two_stars() -> torch.Tensor:
    """Hubs 0 and 5, each with three leaves (both directions, self-loops everywhere)."""
    pairs = [(0, 1), (0, 2), (0, 3), (5, 6), (5, 7), (5, 8)]
    src = [a for a, b in pairs] + [b for a, b in pairs] + list(range(9))
    dst = [b for a, b in pairs] + [a for a, b in pairs] + list(range(9))
    return torch.tensor([src, dst])


def test_node_view_chooses_the_test_node_farthest_from_uniform(tmp_path) -> None:
    ei = two_stars()
    alpha = torch.ones(ei.size(1), 2)
    into = ei[1]
    alpha = alpha / degree(into, 9)[into].unsqueeze(1)  # uniform everywhere ...
    hub = (into == 5).nonzero().flatten()
    alpha[hub] = torch.tensor([[0.7, 0.7], [0.1, 0.1], [0.1, 0.1], [0.1, 0.1]])  # ... but 5
    deg = node_degree(ei, 9)
    test = torch.zeros(9, dtype=torch.bool)
    test[[0, 5]] = True
    cb = AttentionAnalysis(str(tmp_path), min_degree=3, max_degree=12)
    assert cb.choose_node((ei, alpha), test, deg) == 5
    test[5] = False  # 5 is no test node: the uniform hub 0 is the only candidate
    assert cb.choose_node((ei, alpha), test, deg) == 0
    cb = AttentionAnalysis(str(tmp_path), min_degree=4, max_degree=12)
    assert cb.choose_node((ei, alpha), test, deg) == 5  # no candidate: any node


def test_tsne_subset_keeps_every_test_node() -> None:
    test = torch.zeros(5000, dtype=torch.bool)
    test[torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:1000]] = True
    keep = pick_nodes(test.numpy(), 1500, seed=0)
    assert len(keep) == len(set(keep.tolist())) == 1500
    assert set(test.nonzero().flatten().tolist()) <= set(keep.tolist())
    assert (keep == pick_nodes(test.numpy(), 1500, seed=0)).all()
    assert len(pick_nodes(test.numpy(), 600, seed=0)) == 600  # fewer than the test nodes
    assert len(pick_nodes(test.numpy()[:900], 1500, seed=0)) == 900  # small graph: all
