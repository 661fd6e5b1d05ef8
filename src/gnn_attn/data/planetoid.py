"""The Planetoid citation graphs (Cora, CiteSeer, PubMed) as a LightningDataModule."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch_geometric.transforms as T
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid

from gnn_attn.data.base import NodeDataModule
from gnn_attn.errors import UserError

NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
_LOADED: dict[tuple[str, str, bool], Data] = {}
RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
# Planetoid's files carry one-hot labels, no names. The names follow from the class sizes
# of the original LINQS releases, which are all distinct: Cora (cora.content) Theory 351,
# Reinforcement_Learning 217, Genetic_Algorithms 418, Neural_Networks 818,
# Probabilistic_Methods 426, Case_Based 298, Rule_Learning 180; CiteSeer (citeseer.content)
# AI 249, ML 590, IR 668, DB 701, Agents 596, HCI 508. Planetoid's label k has exactly the
# size of the k-th name here (CiteSeer's label 0 also holds the 15 nodes the Planetoid
# files leave unlabelled: 264 = 249 + 15); tests/data/test_planetoid.py checks the sizes.
# PubMed's sizes cannot be checked here (no files): its labels stay ``class k``.
CLASS_NAMES = {
    "Cora": [
        "Theory",
        "Reinforcement learning",
        "Genetic algorithms",
        "Neural networks",
        "Probabilistic methods",
        "Case based",
        "Rule learning",
    ],
    "CiteSeer": ["AI", "ML", "IR", "DB", "Agents", "HCI"],
}
CLASS_SIZES = {
    "Cora": [351, 217, 418, 818, 426, 298, 180],
    "CiteSeer": [264, 590, 668, 701, 596, 508],
}


class _CachedPlanetoid(Planetoid):
    """PyG's :class:`Planetoid`, with the processed tensors kept in a cache directory.

    The raw files stay where they are shipped (``<root>/<Name>/raw``); the processed
    ``data.pt`` goes to ``<cache_dir>/<Name>/processed`` so that nothing is written into
    the source tree.
    """

    def __init__(self, root: str, name: str, cache_dir: str, **kwargs: Any) -> None:
        self._cache_dir = cache_dir
        super().__init__(root, name, **kwargs)

    @property
    def processed_dir(self) -> str:
        return os.path.join(self._cache_dir, self.name, "processed")

    # PyG prints "Processing... Done!" when ``log`` is true; the data module reports instead.
    @property
    def log(self) -> bool:
        return False

    @log.setter
    def log(self, value: bool) -> None:
        pass


class PlanetoidDataModule(NodeDataModule):
    r"""Node classification on a Planetoid graph with its public split (20 labelled nodes
    per class, 500 validation, 1000 test nodes).

    Full batch by default: every epoch is one optimisation step on the training nodes,
    and validation/test are one forward pass each, read through the split's mask.
    ``loader="neighbor"`` trains on sampled mini-batches instead (see
    :class:`~gnn_attn.data.base.NodeDataModule`, which also documents the loader
    arguments passed through ``**loader``).

    Args:
        name: ``cora``, ``citeseer`` or ``pubmed`` (case-insensitive).
        data_dir: folder holding ``<Name>/raw/ind.<name>.*`` (the Planetoid raw files).
        cache_dir: folder for PyG's processed tensors.
        normalize_features: divide each feature row by its sum (:math:`\mathbf{x}_i /
            \sum_j x_{ij}`), as in the GCN and GAT papers.
        download: let PyG download missing raw files (needs network access).

    Batches:
        A :class:`torch_geometric.data.Data` with ``x`` :math:`(N, F)` (CSR or dense),
        ``edge_index`` :math:`(2, E)`, ``y`` :math:`(N,)` and boolean ``train_mask``, ``val_mask``,
        ``test_mask`` of shape :math:`(N,)`.
    """

    def __init__(
        self,
        name: str = "citeseer",
        data_dir: str = "data/planetoid",
        cache_dir: str = ".cache/planetoid",
        normalize_features: bool = True,
        download: bool = True,
        **loader: Any,
    ) -> None:
        super().__init__(**loader)
        key = name.lower()
        if key not in NAMES:
            raise ValueError(f"name '{name}' is unknown; choose one of {', '.join(NAMES)}")
        self.name = NAMES[key]
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.normalize_features = normalize_features
        self.download = download

    @property
    def class_names(self) -> list[str]:
        """The topic of each label (see ``CLASS_NAMES`` for how the order is known)."""
        return CLASS_NAMES.get(self.name) or super().class_names

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.name / "raw"

    def _missing_raw(self) -> list[str]:
        prefix = self.name.lower()
        files = [self.raw_dir / f"ind.{prefix}.{s}" for s in RAW_SUFFIXES]
        return [f.name for f in files if not f.is_file()]

    def prepare_data(self) -> None:
        self._cached()  # read (or download) once; setup() takes its copy

    def _cached(self) -> Data:
        """The graph from the per-process cache (a sweep's jobs in one process read the
        files once)."""
        key = (str(self.data_dir.resolve()), self.name, self.normalize_features)
        if key not in _LOADED:
            _LOADED[key] = self._read()
        return _LOADED[key]

    def _load(self) -> Data:
        return self._cached().clone()  # setup() may change x's layout: keep the cache

    def _verify_checksums(self) -> None:
        """Compare the raw files with ``<data_dir>/SHA256SUMS`` (shipped with Cora and
        CiteSeer), so that a truncated or edited file is named instead of misread."""
        sums = self.data_dir / "SHA256SUMS"
        if not sums.is_file():
            return
        for line in sums.read_text().splitlines():
            digest, _, rel = line.strip().partition("  ")
            path = self.data_dir / rel
            if not rel.startswith(f"{self.name}/") or not path.is_file():
                continue
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise UserError(
                    f"{path} does not match its sha256 in {sums} (truncated or modified); "
                    f"restore it: git checkout -- {path}"
                )

    def _read(self) -> Data:
        self._verify_checksums()
        missing = self._missing_raw()
        if missing and not self.download:
            raise UserError(
                f"{self.name} raw files missing in {self.raw_dir} ({', '.join(missing)}); "
                f"copy the Planetoid files ind.{self.name.lower()}.* there or set "
                "data.download=true"
            )
        transform = T.NormalizeFeatures() if self.normalize_features else None
        try:
            dataset = _CachedPlanetoid(
                str(self.data_dir), self.name, str(self.cache_dir), transform=transform
            )
        except (urllib.error.URLError, OSError) as err:
            if missing:
                raise UserError(
                    f"{self.name} raw files are not in {self.raw_dir} and downloading them "
                    f"failed ({_reason(err)}); put the Planetoid files "
                    f"ind.{self.name.lower()}.{{x,tx,allx,y,ty,ally,graph,test.index}} "
                    "there, or run once with network access"
                ) from err
            raise UserError(
                f"could not read the {self.name} files in {self.raw_dir} ({_reason(err)}); "
                f"restore them (git checkout {self.raw_dir}) or delete {self.cache_dir}"
            ) from err
        except Exception as err:  # a truncated or corrupt raw/processed file
            raise UserError(
                f"could not read the {self.name} files in {self.raw_dir} or the cache "
                f"{self.cache_dir} ({type(err).__name__}: {err}); restore the raw files "
                f"(git checkout {self.raw_dir}) and delete {self.cache_dir}"
            ) from err
        return dataset[0]


def _reason(err: BaseException) -> str:
    return str(getattr(err, "reason", None) or err).strip().splitlines()[0][:120]
