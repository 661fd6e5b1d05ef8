"""The Planetoid citation graphs (Cora, CiteSeer, PubMed) as a full-batch LightningDataModule."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid

from gnn_attn.analysis.graph import node_degree
from gnn_attn.errors import UserError

NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
_LOADED: dict[tuple[str, str, bool], Data] = {}
RAW_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


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


def graph_stats(data: Data) -> dict[str, Any]:
    """Size and split of a node-classification graph.

    ``edges`` counts undirected edges (``edge_index`` holds both directions); degrees are
    :func:`~gnn_attn.analysis.graph.node_degree` (self-loops excluded).
    """
    n = data.num_nodes
    deg = node_degree(data.edge_index, n).float()
    return {
        "nodes": n,
        "edges": data.edge_index.size(1) // 2,
        "features": int(data.x.size(1)),
        "classes": int(data.y.max()) + 1,
        "train": int(data.train_mask.sum()),
        "val": int(data.val_mask.sum()),
        "test": int(data.test_mask.sum()),
        "isolated": int((deg == 0).sum()),
        "mean_degree": round(float(deg.mean()), 3),
        "max_degree": int(deg.max()),
        "feature_density": round(_density(data.x), 5),
    }


def _density(x: torch.Tensor) -> float:
    nnz = x._nnz() if x.is_sparse or x.layout == torch.sparse_csr else int((x != 0).sum())
    return nnz / (x.size(0) * x.size(1))


class FullBatch:
    """An iterable of one batch: the whole graph (no DataLoader, no worker processes)."""

    def __init__(self, data: Data) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Data]:
        yield self.data

    def __len__(self) -> int:
        return 1


class PlanetoidDataModule(L.LightningDataModule):
    r"""Full-batch node classification on a Planetoid graph with its public split.

    One "batch" is the whole graph: every epoch is one optimisation step on the training
    nodes, and validation/test are one forward pass each, read through the split's mask.
    The graph is moved to the accelerator once and reused.

    Args:
        name: ``cora``, ``citeseer`` or ``pubmed`` (case-insensitive).
        data_dir: folder holding ``<Name>/raw/ind.<name>.*`` (the Planetoid raw files).
        cache_dir: folder for PyG's processed tensors.
        normalize_features: divide each feature row by its sum (:math:`\mathbf{x}_i /
            \sum_j x_{ij}`), as in the GCN and GAT papers.
        sparse_features: keep ``x`` as a CSR tensor (the features are ~1 % non-zero); every
            backbone takes it, with dropout on the stored values only. ``false`` keeps the
            dense matrix (for comparison; much slower).
        download: let PyG download missing raw files (needs network access).
        verbose: print the dataset report at setup.

    Batches:
        A :class:`torch_geometric.data.Data` with ``x`` :math:`(N, F)` (CSR or dense), ``edge_index``
        :math:`(2, E)`, ``y`` :math:`(N,)` and boolean ``train_mask``, ``val_mask``,
        ``test_mask`` of shape :math:`(N,)`.
    """

    def __init__(
        self,
        name: str = "citeseer",
        data_dir: str = "data/planetoid",
        cache_dir: str = ".cache/planetoid",
        normalize_features: bool = True,
        sparse_features: bool = True,
        download: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        key = name.lower()
        if key not in NAMES:
            raise UserError(
                f"unknown dataset '{name}'; choose one of {', '.join(NAMES)} (data=cora)"
            )
        self.name = NAMES[key]
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.normalize_features = normalize_features
        self.sparse_features = sparse_features
        self.download = download
        self.verbose = verbose
        self.data: Data | None = None
        self.stats: dict[str, Any] = {}
        self._on_device: dict[torch.device, Data] = {}

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / self.name / "raw"

    def _missing_raw(self) -> list[str]:
        prefix = self.name.lower()
        files = [self.raw_dir / f"ind.{prefix}.{s}" for s in RAW_SUFFIXES]
        return [f.name for f in files if not f.is_file()]

    def prepare_data(self) -> None:
        self._cached()  # read (or download) once; setup() takes its copy

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            data = self._load()
            if self.sparse_features:
                data.x = data.x.to_sparse_csr()
            self.data = data
            self.stats = {"dataset": self.name, **graph_stats(self.data)}
            if self.verbose:
                print(self.report())

    def _cached(self) -> Data:
        """The graph from the per-process cache (a sweep's jobs in one process read the
        files once)."""
        key = (str(self.data_dir.resolve()), self.name, self.normalize_features)
        if key not in _LOADED:
            _LOADED[key] = self._read()
        return _LOADED[key]

    def _load(self) -> Data:
        return self._cached().clone()

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

    @property
    def num_features(self) -> int:
        assert self.data is not None, "call setup() first"
        return int(self.data.x.size(1))

    @property
    def num_classes(self) -> int:
        return self.stats["classes"]

    def report(self) -> str:
        s = self.stats
        return (
            f"{s['dataset']}: {s['nodes']} nodes, {s['edges']} edges, {s['features']} "
            f"features, {s['classes']} classes | split {s['train']}/{s['val']}/{s['test']} | "
            f"{s['isolated']} isolated nodes, mean degree {s['mean_degree']}"
        )

    # One batch (the whole graph) per epoch, for every stage.
    def _loader(self) -> FullBatch:
        assert self.data is not None, "call setup() first"
        return FullBatch(self.data)

    def train_dataloader(self) -> FullBatch:
        return self._loader()

    def val_dataloader(self) -> FullBatch:
        return self._loader()

    def test_dataloader(self) -> FullBatch:
        return self._loader()

    def predict_dataloader(self) -> FullBatch:
        return self._loader()

    def transfer_batch_to_device(
        self, batch: Data, device: torch.device, dataloader_idx: int
    ) -> Data:
        """Move the graph once per device and hand out the same copy afterwards."""
        if batch is not self.data:
            return batch.to(device)
        if device not in self._on_device:
            self._on_device[device] = batch.to(device)
        return self._on_device[device]


def _reason(err: BaseException) -> str:
    return str(getattr(err, "reason", None) or err).strip().splitlines()[0][:120]
