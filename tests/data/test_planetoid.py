"""The Planetoid data module on the shipped raw files (PyG's real Planetoid)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gnn_attn.data import PlanetoidDataModule
from gnn_attn.data.planetoid import CLASS_NAMES, CLASS_SIZES
from gnn_attn.errors import UserError
from tests.conftest import ROOT

DATA = ROOT / "data" / "planetoid"

EXPECTED = {
    # name: nodes, features, classes, train/val/test, isolated
    "cora": (2708, 1433, 7, (140, 500, 1000), 0),
    "citeseer": (3327, 3703, 6, (120, 500, 1000), 48),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_the_papers(name: str, cache_dir: Path) -> None:
    dm = PlanetoidDataModule(name, data_dir=str(DATA), cache_dir=str(cache_dir), verbose=False)
    dm.setup("fit")
    nodes, feats, classes, split, isolated = EXPECTED[name]
    s = dm.stats
    assert (s["nodes"], s["features"], s["classes"]) == (nodes, feats, classes)
    assert (s["train"], s["val"], s["test"]) == split
    assert s["isolated"] == isolated
    assert dm.num_features == feats and dm.num_classes == classes
    data = dm.data
    # masks are disjoint and the batch is the whole graph
    assert not (data.train_mask & data.val_mask).any()
    assert not (data.val_mask & data.test_mask).any()
    (batch,) = list(dm.train_dataloader())
    assert batch is data
    assert name.lower() in dm.report().lower() and str(nodes) in dm.report()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_class_names_follow_from_the_class_sizes(name: str, cache_dir: Path) -> None:
    """The names are those of the LINQS class with the same size (sizes are distinct)."""
    dm = PlanetoidDataModule(name, data_dir=str(DATA), cache_dir=str(cache_dir), verbose=False)
    dm.setup("fit")
    sizes = torch.bincount(dm.data.y).tolist()
    assert sizes == CLASS_SIZES[dm.name] and len(set(sizes)) == len(sizes)
    assert len(dm.class_names) == dm.num_classes == len(CLASS_NAMES[dm.name])


def test_features_are_row_normalised(cache_dir: Path) -> None:
    dm = PlanetoidDataModule("cora", data_dir=str(DATA), cache_dir=str(cache_dir), verbose=False)
    dm.setup()
    assert dm.data.x.layout == torch.sparse_csr  # sparse by default
    sums = dm.data.x.to_dense().sum(dim=1)
    nonzero = sums > 0
    assert torch.allclose(sums[nonzero], torch.ones(int(nonzero.sum())), atol=1e-5)
    raw = PlanetoidDataModule(
        "cora",
        data_dir=str(DATA),
        cache_dir=str(cache_dir),
        normalize_features=False,
        sparse_features=False,
    )
    raw.setup()
    assert raw.data.x.layout == torch.strided
    assert raw.data.x.max() == 1.0 and raw.data.x.sum(dim=1).max() > 1.0


def test_graph_moves_to_device_once(cache_dir: Path) -> None:
    dm = PlanetoidDataModule("cora", data_dir=str(DATA), cache_dir=str(cache_dir), verbose=False)
    dm.setup()
    cpu = torch.device("cpu")
    first = dm.transfer_batch_to_device(dm.data, cpu, 0)
    assert dm.transfer_batch_to_device(dm.data, cpu, 0) is first
    dm.serve_receptive_fields(2)  # each split's field is built once and moved once
    (field,) = list(dm.train_dataloader())
    assert field.batch_size == int(dm.data.train_mask.sum())
    assert field is next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(field, cpu, 0)
    assert dm.transfer_batch_to_device(field, cpu, 0) is moved


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(ValueError, match="name 'reddit' is unknown"):
        PlanetoidDataModule("reddit")


def test_missing_pubmed_offline_says_where_to_put_files(tmp_path: Path) -> None:
    dm = PlanetoidDataModule("pubmed", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"PubMed/raw"):
        dm.setup()
    no_download = PlanetoidDataModule(
        "pubmed", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"), download=False
    )
    with pytest.raises(UserError, match=r"ind\.pubmed\.\*"):
        no_download.setup()


def test_corrupt_raw_file_is_a_user_error(tmp_path: Path) -> None:
    shutil.copytree(DATA / "Cora", tmp_path / "Cora")
    target = tmp_path / "Cora" / "raw" / "ind.cora.graph"
    target.write_bytes(target.read_bytes()[:100])
    dm = PlanetoidDataModule("cora", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="could not read the Cora files"):
        dm.setup()
