"""The synthetic SBM graph: deterministic per seed, cached, shaped as asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gnn_attn.data import SyntheticDataModule, make_sbm
from gnn_attn.errors import UserError


def _same(a, b) -> bool:
    keys = ("edge_index", "y", "train_mask", "val_mask", "test_mask")
    return all(torch.equal(a[k], b[k]) for k in keys) and torch.equal(
        a.x.to_dense(), b.x.to_dense()
    )


def test_same_seed_same_graph_other_seed_other_graph() -> None:
    a, b = make_sbm(2000, seed=3), make_sbm(2000, seed=3)
    c = make_sbm(2000, seed=4)
    assert _same(a, b)
    assert not torch.equal(a.y, c.y)


def test_graph_has_the_asked_shape() -> None:
    n = 5000
    data = make_sbm(n, num_classes=5, avg_degree=8, homophily=0.8, num_features=300)
    src, dst = data.edge_index
    assert data.num_nodes == n and data.x.shape == (n, 300)
    assert bool((src != dst).all())  # no self-loops
    key = src * n + dst
    assert key.unique().numel() == key.numel()  # no duplicates
    assert torch.equal(torch.sort(key).values, torch.sort(dst * n + src).values)  # undirected
    assert abs(src.numel() / n - 8) < 0.5  # mean degree ≈ 8 (duplicates removed)
    homophily = float((data.y[src] == data.y[dst]).float().mean())
    assert abs(homophily - (0.8 + 0.2 / 5)) < 0.03
    row_sums = data.x.to_dense().sum(1)
    torch.testing.assert_close(row_sums, torch.ones(n))  # row-normalised counts
    masks = data.train_mask.int() + data.val_mask.int() + data.test_mask.int()
    assert int(masks.max()) == 1  # disjoint splits
    assert (int(data.train_mask.sum()), int(data.val_mask.sum())) == (500, 250)


def test_module_caches_the_graph_and_reloads_it_identically(tmp_path: Path) -> None:
    kwargs = dict(num_nodes=3000, cache_dir=str(tmp_path), verbose=False)
    first = SyntheticDataModule(**kwargs)
    first.setup("fit")
    files = list(tmp_path.glob("sbm-3k-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = SyntheticDataModule(**kwargs)
    second.setup("fit")
    assert files[0].stat().st_mtime_ns == stamp  # read, not regenerated
    assert _same(first.data, second.data)
    assert _same(first.data, make_sbm(3000))
    other = SyntheticDataModule(**{**kwargs, "graph_seed": 1})
    other.prepare_data()
    assert len(list(tmp_path.glob("sbm-3k-*.pt"))) == 2


def test_corrupt_cache_is_one_clear_error(tmp_path: Path) -> None:
    dm = SyntheticDataModule(num_nodes=1000, cache_dir=str(tmp_path), verbose=False)
    dm.prepare_data()
    dm.cache_file.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="delete it and run again"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_nodes": 10}, "^num_nodes"),
        ({"homophily": 1.5}, "^homophily"),
        ({"split": [0.5, 0.5, 0.5]}, "^split"),
        ({"colour": "red"}, "^colour is not an option of data=synthetic"),
        ({"loader": "random"}, "^loader 'random' is unknown"),
        ({"num_neighbors": [10, 0]}, "^num_neighbors"),
        ({"batch_size": 0}, "^batch_size"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    """Argument errors name the argument (the run turns them into ``data.<name>``)."""
    with pytest.raises((ValueError, TypeError), match=match):
        SyntheticDataModule(**kwargs)
