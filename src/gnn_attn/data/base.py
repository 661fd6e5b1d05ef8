"""What every node-classification data module shares: full-batch, receptive-field or
neighbour-sampled loaders, sharding between DDP ranks, one transfer of the graph per
device, the report."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch_geometric.data import Data
from torch_geometric.utils import degree

from gnn_attn.data.sampler import NeighborBatches, NeighborSampler, receptive_field

LOADERS = ("full", "neighbor")


def node_degree(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """In-degree of every node on ``edge_index`` as stored (self-loops excluded),
    :math:`(N,)` long. Planetoid graphs are symmetric, so this is the degree."""
    src, dst = edge_index
    keep = src != dst
    return degree(dst[keep], num_nodes=num_nodes, dtype=torch.long)


def graph_stats(data: Data) -> dict[str, Any]:
    """Size and split of a node-classification graph.

    ``edges`` counts undirected edges (``edge_index`` holds both directions); degrees are
    :func:`node_degree` (self-loops excluded).
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


class NodeDataModule(L.LightningDataModule):
    r"""Transductive node classification on one graph, full-batch or mini-batch.

    Subclasses implement :meth:`_load` (the graph as a :class:`~torch_geometric.data.Data`
    with ``x``, ``edge_index``, ``y`` and boolean ``train_mask``/``val_mask``/
    ``test_mask``) and set ``self.name``.

    ``loader="full"``: one batch per epoch, the whole graph; loss and metrics are read
    through the stage's mask. The graph is moved to the accelerator once. After
    :meth:`serve_receptive_fields` (the run does it for backbones whose outputs are exact
    on a receptive field: GAT, GATv2, MLP), each stage's batch is instead its nodes with
    their complete in-neighbourhood of that many hops, seeds first, built once: the same
    logits, loss and gradients for those nodes at a fraction of the work (CiteSeer's 120
    training nodes: the last layer computes 120 rows instead of 3327).

    ``loader="neighbor"``: mini-batches of ``batch_size`` seed nodes of the stage's split,
    each with its sampled ``num_neighbors``-hop neighbourhood
    (:class:`~gnn_attn.data.sampler.NeighborBatches`); loss and metrics use the seeds
    only (``batch.batch_size`` first rows). Training draws ``num_neighbors[l]`` neighbours
    per node at hop ``l``; evaluation (validation, test) is mini-batch with
    ``eval_num_neighbors`` (default all neighbours) in batches of ``eval_batch_size``.
    With all neighbours, evaluation of GAT/GATv2 (attention normalises over each
    target's in-edges, all present) and MLP is exact: the same logits as a full-graph
    pass. GCN's symmetric normalisation sees the batch's degrees for the outermost nodes
    (as with PyG's ``NeighborLoader``), so its mini-batch evaluation is close, not equal.
    Under DDP each rank takes its share of the seeds.

    Args:
        loader: ``full`` or ``neighbor``.
        num_neighbors: fan-out per hop (one entry per message-passing layer; -1 = all).
        batch_size: seed nodes per training batch.
        eval_batch_size: seed nodes per evaluation batch.
        eval_num_neighbors: evaluation fan-out per hop; ``None`` = all neighbours.
        seed: base seed of the batch order and of the sampling.
        sparse_features: keep ``x`` as CSR (bag-of-words features are ~1 % non-zero;
            the template's backbones take CSR, with dropout on the stored values only);
            ``false`` makes it dense (for comparison, and for backbones that do not
            declare ``supports_csr``: the run passes false for them).
        verbose: print the dataset report at setup.
    """

    def __init__(
        self,
        loader: str = "full",
        num_neighbors: Sequence[int] = (10, 10),
        batch_size: int = 512,
        eval_batch_size: int = 2048,
        eval_num_neighbors: Sequence[int] | None = None,
        seed: int = 0,
        sparse_features: bool = True,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if loader not in LOADERS:
            raise ValueError(f"loader '{loader}' is unknown; choose full or neighbor")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1 (got {value!r})")
        fanouts = list(num_neighbors)
        if not fanouts or any(int(k) == 0 or int(k) < -1 for k in fanouts):
            raise ValueError(
                f"num_neighbors must list one fan-out ≥ 1 (or -1 = all) per layer (got {fanouts})"
            )
        self.name = "graph"
        self.loader = loader
        self.num_neighbors = [int(k) for k in fanouts]
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.eval_num_neighbors = None if eval_num_neighbors is None else list(eval_num_neighbors)
        self.seed = seed
        self.sparse_features = sparse_features
        self.verbose = verbose
        self.data: Data | None = None
        self.stats: dict[str, Any] = {}
        self._on_device: dict[tuple[int, torch.device], tuple[Data, Data]] = {}
        self._sampler: NeighborSampler | None = None
        self._field_hops: int | None = None
        self._fields: dict[str, Data] = {}

    # --- what subclasses provide -------------------------------------------------------
    def _load(self) -> Data:
        raise NotImplementedError

    # --- set-up ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            data = self._load()
            is_csr = data.x.layout == torch.sparse_csr
            if self.sparse_features and not is_csr:
                data.x = data.x.to_sparse_csr()
            elif not self.sparse_features and is_csr:
                data.x = data.x.to_dense()
            self.data = data
            self.stats = {"dataset": self.name, **graph_stats(self.data)}
            if self.verbose:
                print(self.report())

    def serve_receptive_fields(self, hops: int | None) -> None:
        """Full batch: serve each stage's ``hops``-hop receptive field (seeds first)
        instead of the whole graph; ``None``: the whole graph (see the class doc)."""
        self._field_hops = hops
        stale = {id(f) for f in self._fields.values()}
        self._on_device = {k: v for k, v in self._on_device.items() if k[0] not in stale}
        self._fields.clear()

    @property
    def num_features(self) -> int:
        assert self.data is not None, "call setup() first"
        return int(self.data.x.size(1))

    @property
    def num_classes(self) -> int:
        return self.stats["classes"]

    @property
    def class_names(self) -> list[str]:
        """A name per label, :math:`C` strings; ``class k`` unless the dataset knows its
        classes (subclasses override)."""
        return [f"class {k}" for k in range(self.num_classes)]

    def report(self) -> str:
        s = self.stats
        batches = (
            "full batch"
            if self.loader == "full"
            else f"mini-batches of {self.batch_size}, fan-out {self.num_neighbors}"
        )
        return (
            f"{s['dataset']}: {s['nodes']} nodes, {s['edges']} edges, {s['features']} "
            f"features, {s['classes']} classes | split {s['train']}/{s['val']}/{s['test']} | "
            f"{s['isolated']} isolated nodes, mean degree {s['mean_degree']} | {batches}"
        )

    # --- loaders -------------------------------------------------------------------------
    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, stage: str, training: bool | None = None) -> FullBatch | NeighborBatches:
        """The batches of ``stage``; ``training`` (default: ``stage == "train"``) draws
        the training fan-outs in shuffled batches, else evaluation fan-outs in order."""
        assert self.data is not None, "call setup() first"
        if self.loader == "full":
            if self._field_hops is None:
                return FullBatch(self.data)
            if stage not in self._fields:
                seeds = self.data[f"{stage}_mask"].nonzero().view(-1)
                self._fields[stage] = receptive_field(self.data, seeds, self._field_hops)
            return FullBatch(self._fields[stage])
        if self._sampler is None:
            self._sampler = NeighborSampler(self.data.edge_index, self.data.num_nodes)
        train = stage == "train" if training is None else training
        hops = len(self.num_neighbors)
        fanouts = self.num_neighbors if train else (self.eval_num_neighbors or [-1] * hops)
        rank, world = self._ranks()
        seeds = self.data[f"{stage}_mask"].nonzero().view(-1)
        return NeighborBatches(
            self.data,
            self._sampler,
            seeds,
            fanouts,
            self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            epoch=self._epoch,
            rank=rank,
            world_size=world,
            pad=train,
        )

    def eval_dataloader(self, stage: str) -> FullBatch | NeighborBatches:
        """The batches of ``stage`` as evaluation sees them (the training nodes' accuracy
        of a selected checkpoint: evaluation fan-outs, no shuffle)."""
        return self._loader(stage, training=False)

    def train_dataloader(self) -> FullBatch | NeighborBatches:
        return self._loader("train")

    def val_dataloader(self) -> FullBatch | NeighborBatches:
        return self._loader("val")

    def test_dataloader(self) -> FullBatch | NeighborBatches:
        return self._loader("test")

    def transfer_batch_to_device(
        self, batch: Data, device: torch.device, dataloader_idx: int
    ) -> Data:
        """Move the whole graph and the receptive fields once per device and hand out
        the same copies afterwards; mini-batches move as they come."""
        if batch is not self.data and all(batch is not f for f in self._fields.values()):
            return batch.to(device)
        key = (id(batch), device)
        if key not in self._on_device or self._on_device[key][0] is not batch:
            self._on_device[key] = (batch, batch.to(device))
        return self._on_device[key][1]
