"""Any PyG dataset as one YAML: its masks, or a seeded split rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch_geometric.data import Data
from torch_geometric.datasets import KarateClub

from gnn_attn.data import PyGDataModule
from tests.conftest import CONF


def karate_from_config(tmp_path: Path) -> PyGDataModule:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["data=karate", f"paths.output_dir={tmp_path}"])
    dm = instantiate(cfg.data, verbose=False)
    dm.setup("fit")
    return dm


def test_karate_yaml_gives_a_seeded_disjoint_split(tmp_path: Path) -> None:
    state = torch.get_rng_state()
    dm = karate_from_config(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)  # the split leaves the run's stream
    d = dm.data
    sizes = [int(d[m].sum()) for m in ("train_mask", "val_mask", "test_mask")]
    assert sizes == [8, 8, 16]
    assert not (d.train_mask & d.val_mask).any() and not (d.val_mask & d.test_mask).any()
    assert d.y[d.train_mask].bincount().tolist() == [2, 2, 2, 2]
    again = karate_from_config(tmp_path).data
    assert torch.equal(again.test_mask, d.test_mask)
    assert dm.stats["nodes"] == 34 and dm.num_classes == 4


def test_dataset_masks_are_used_and_missing_ones_named() -> None:
    g = KarateClub()[0]
    with pytest.raises(ValueError, match=r"^split: KarateClub has no val_mask, test_mask"):
        PyGDataModule(KarateClub(), verbose=False).setup()
    n = g.num_nodes
    masks = {
        m: torch.zeros(n, 3, dtype=torch.bool) for m in ("train_mask", "val_mask", "test_mask")
    }
    for i, m in enumerate(masks):
        masks[m][i::3, 1] = True
    data = Data(x=g.x, edge_index=g.edge_index, y=g.y, **masks)
    dm = PyGDataModule(data, name="own", mask_index=1, verbose=False)
    dm.setup()
    assert torch.equal(dm.data.val_mask, masks["val_mask"][:, 1])
