"""DictionaryLookup (Brody et al. 2022): the generator, the split by graph, the cache, the
data module of many graphs, and one-line errors for impossible settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gnn_attn.data import DictionaryLookupDataModule, lookup_graph
from gnn_attn.data.dictionary_lookup import lookup_permutations
from gnn_attn.data.graph_set import EpochShuffle
from tests.conftest import run_entry, train_overrides


def make(tmp_path: Path, **kwargs) -> DictionaryLookupDataModule:
    dm = DictionaryLookupDataModule(cache_dir=str(tmp_path / "cache"), verbose=False, **kwargs)
    dm.setup("fit")
    return dm


def test_every_query_is_labelled_with_the_value_of_its_key() -> None:
    values = torch.tensor([3, 0, 4, 1, 2])
    g = lookup_graph(values)
    k = 5
    key = g.x[:, :k].argmax(1)
    value = g.x[:, k:].argmax(1)  # k = "empty"
    queries = torch.nonzero(g.target_mask).view(-1)
    assert queries.tolist() == list(range(k))
    assert (value[queries] == k).all()  # the queries hold no value
    for q in queries.tolist():
        holder = [j for j in range(k, 2 * k) if key[j] == key[q]]
        assert len(holder) == 1  # exactly one key–value node with the query's key
        assert int(g.y[q]) == int(value[holder[0]])
    assert (g.x.sum(1) == 2).all()  # one key and one value column per node


def test_the_graph_is_complete_bipartite_from_key_value_nodes_to_queries() -> None:
    k = 6
    g = lookup_graph(torch.randperm(k))
    src, dst = g.edge_index
    assert g.edge_index.size(1) == k * k
    assert (src >= k).all() and (dst < k).all()  # key–value node → query, never back
    pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert pairs == {(j, i) for j in range(k, 2 * k) for i in range(k)}


def test_small_k_takes_every_permutation_and_large_k_distinct_ones() -> None:
    perms = lookup_permutations(4, 100, seed=0)
    assert len(perms) == math.factorial(4) == len({tuple(p) for p in perms.tolist()})
    sample = lookup_permutations(10, 500, seed=1)
    assert len(sample) == 500 == len({tuple(p) for p in sample.tolist()})
    assert (sample.sort(1).values == torch.arange(10)).all()  # each row a permutation


def test_split_is_by_graph_and_the_generator_is_deterministic(tmp_path: Path) -> None:
    dm = make(tmp_path, k=6, num_graphs=200)
    sizes = {s: len(dm.graphs[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 160, "val": 20, "test": 20}
    seen = {s: {tuple(g.y[:6].tolist()) for g in dm.graphs[s]} for s in sizes}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    assert sum(len(v) for v in seen.values()) == 200  # distinct graphs
    again = make(tmp_path / "other", k=6, num_graphs=200)  # a fresh cache: regenerated
    assert [g.y.tolist() for g in again.graphs["test"]] == [g.y.tolist() for g in dm.graphs["test"]]
    moved = make(tmp_path, k=6, num_graphs=200, graph_seed=1)
    assert [g.y.tolist() for g in moved.graphs["test"]] != [g.y.tolist() for g in dm.graphs["test"]]
    assert dm.cache_file.is_file() and moved.cache_file != dm.cache_file


def test_batches_hold_whole_graphs_and_the_training_order_follows_the_epoch(
    tmp_path: Path,
) -> None:
    dm = make(tmp_path, k=5, num_graphs=120, batch_size=8, seed=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 8 and batch.num_nodes == 80
    assert int(batch.target_mask.sum()) == 40  # the queries of 8 graphs
    shuffles = [list(EpochShuffle(96, seed=3, epoch=lambda e=e: e)) for e in (0, 1, 0)]
    assert shuffles[0] == shuffles[2] != shuffles[1]  # drawn from the seed and the epoch
    assert sorted(shuffles[1]) == list(range(96))
    assert len(dm.data.test_mask) == dm.data.num_nodes
    assert int(dm.data.test_mask.sum()) == 5 * len(dm.graphs["test"])
    assert dm.stats["graphs"] == {"train": 96, "val": 12, "test": 12}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 1}, "k must be an integer ≥ 2"),
        ({"k": 2}, "only 2 distinct graphs"),
        ({"num_graphs": 2}, "num_graphs must be an integer ≥ 3"),
        ({"split": [0.8, 0.0, 0.2]}, "split must be three fractions > 0"),
        ({"split": [0.8, 0.3, 0.2]}, "summing to ≤ 1"),
        ({"k": 3, "split": [0.01, 0.5, 0.49]}, "cannot be split"),
    ],
)
def test_impossible_settings_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DictionaryLookupDataModule(cache_dir=str(tmp_path), **kwargs)


def test_impossible_settings_are_one_line_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_entry(
        "train.py", *train_overrides(out, tmp_path / "cache", "data=dictionary_lookup",
                                     "data.k=2"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: data.") and "k=2 allows only 2 distinct graphs" in last
    assert not (out / "metrics.json").exists()


def test_heads_that_do_not_split_the_width_are_one_line(tmp_path: Path) -> None:
    proc = run_entry(
        "train.py", *train_overrides(tmp_path / "out", tmp_path / "cache", "model=gat",
                                     "data=dictionary_lookup", "model.heads=3"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: model.hidden_channels: a width of 128 does not split")
