"""Any PyG in-memory dataset of one graph as a data module: its masks, or a split rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data, Dataset

from gnn_attn.data.base import NodeDataModule

MASKS = ("train_mask", "val_mask", "test_mask")


class PyGDataModule(NodeDataModule):
    r"""Node classification on graph ``graph`` of a PyG dataset (``Planetoid``,
    ``Amazon``, ``WikiCS``, ``KarateClub``, ... or your own ``InMemoryDataset``), with the
    dataset's own masks or a seeded random split. In a config, the dataset is a nested
    ``_target_`` that Hydra builds (see ``conf/data/karate.yaml``).

    Args:
        dataset: the dataset (or one :class:`~torch_geometric.data.Data`).
        name: its name in reports (default: the dataset's class name).
        graph: which graph of the dataset (default 0).
        split: ``None`` to use the dataset's ``train_mask``/``val_mask``/``test_mask``;
            else the arguments of :class:`torch_geometric.transforms.RandomNodeSplit`
            (e.g. ``{split: random, num_train_per_class: 20, num_val: 500, num_test:
            1000}``), drawn with ``split_seed`` (the run's seed does not move the split).
        split_seed: seed of the random split.
        mask_index: column of 2-D masks (datasets that ship several splits).
        normalize_features: divide each feature row by its sum.
        **loader: the loader arguments of :class:`~gnn_attn.data.base.NodeDataModule`.
    """

    def __init__(
        self,
        dataset: Dataset | Data,
        name: str | None = None,
        graph: int = 0,
        split: Mapping[str, Any] | None = None,
        split_seed: int = 0,
        mask_index: int = 0,
        normalize_features: bool = False,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        if split is not None and not isinstance(split, Mapping):
            raise TypeError(f"split must be null or RandomNodeSplit's arguments (got {split!r})")
        self.dataset = dataset
        self.name = name or type(dataset).__name__
        self.graph, self.mask_index = graph, mask_index
        self.split = None if split is None else dict(split)
        self.split_seed = split_seed
        self.normalize_features = normalize_features

    def _load(self) -> Data:
        data = self.dataset if isinstance(self.dataset, Data) else self.dataset[self.graph]
        data = data.clone()
        if self.split is not None:
            with torch.random.fork_rng():  # the split must not move the run's random stream
                torch.manual_seed(self.split_seed)
                data = T.RandomNodeSplit(**self.split)(data)
        missing = [m for m in MASKS if m not in data]
        if missing:
            raise ValueError(
                f"split: {self.name} has no {', '.join(missing)}; give a split rule, e.g. "
                "split={split: random, num_train_per_class: 20, num_val: 500, num_test: 1000}"
            )
        for m in MASKS:
            if data[m].dim() == 2:
                data[m] = data[m][:, self.mask_index]
        if self.normalize_features:
            data = T.NormalizeFeatures()(data)
        return Data(
            x=data.x.float(),
            edge_index=data.edge_index,
            y=data.y.view(-1),
            **{m: data[m].bool() for m in MASKS},
        )
