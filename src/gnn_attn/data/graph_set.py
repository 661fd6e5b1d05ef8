"""Node classification over a set of small graphs: train, validation and test are
different graphs, served in batches of graphs by PyG's ``DataLoader``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DistributedSampler, Sampler
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from gnn_attn.data.base import node_degree
from gnn_attn.errors import UserError

STAGES = ("train", "val", "test")


class EpochShuffle(Sampler[int]):
    """A permutation of ``n`` items drawn from ``seed`` and the epoch number: the same
    order for the same epoch whatever ran before (an exact resume draws it again)."""

    def __init__(self, n: int, seed: int, epoch: Callable[[], int]) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class RankShare(DistributedSampler):
    """One DDP rank's share of ``n`` items, in order and without the padding of
    :class:`~torch.utils.data.DistributedSampler` (which repeats items to even the
    ranks out): every graph is evaluated exactly once."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        self.share = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.share)

    def __len__(self) -> int:
        return len(self.share)


class GraphSetDataModule(L.LightningDataModule):
    r"""Node classification over many small graphs: each split is its own set of graphs
    and a batch is the disjoint union of ``batch_size`` of them (PyG's
    :class:`~torch_geometric.loader.DataLoader`, which needs no extra libraries).

    Subclasses implement :meth:`_load`: per split a list of
    :class:`~torch_geometric.data.Data` with ``x`` :math:`(n_g, F)`, ``edge_index``
    :math:`(2, E_g)`, ``y`` :math:`(n_g,)` (a class for every node, scored or not) and
    ``target_mask`` :math:`(n_g,)` bool, the nodes that are scored; and set ``self.name``.
    :class:`~gnn_attn.models.NodeClassifier` scores a batch's ``target_mask`` nodes. The
    training order is reshuffled every epoch from ``seed`` and the epoch number.

    For the analysis callbacks (t-SNE, degree accuracy, attention, predictions), which
    look at one graph, :attr:`data` is the disjoint union of the first
    ``analysis_graphs`` test graphs with ``test_mask`` = their targets (``train_mask``
    and ``val_mask`` empty).

    Args:
        batch_size: graphs per training batch.
        eval_batch_size: graphs per validation/test batch.
        analysis_graphs: test graphs in :attr:`data`.
        seed: the shuffle's seed.
        verbose: print the dataset report at setup.
    """

    loader = "graphs"  # what build.py and the stacked launcher ask of a data module

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        analysis_graphs: int = 100,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        for key, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("analysis_graphs", analysis_graphs),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer ≥ 1 (got {value!r})")
        self.name = "graphs"
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.analysis_graphs, self.seed, self.verbose = analysis_graphs, seed, verbose
        self.graphs: dict[str, list[Data]] = {}
        self.data: Data | None = None
        self.stats: dict[str, Any] = {}

    # --- what subclasses provide -------------------------------------------------------
    def _load(self) -> dict[str, list[Data]]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return self.stats["classes"]

    @property
    def class_names(self) -> list[str]:
        return [f"class {k}" for k in range(self.num_classes)]

    # --- set-up ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.graphs:
            return
        graphs = self._load()
        self.graphs = {s: graphs[s] for s in STAGES}
        union = Batch.from_data_list([g for s in STAGES for g in self.graphs[s]])
        deg = node_degree(union.edge_index, union.num_nodes).float()
        self.stats = {
            "dataset": self.name,
            "graphs": {s: len(self.graphs[s]) for s in STAGES},
            "nodes": union.num_nodes,
            "edges": union.edge_index.size(1),  # directed, as stored
            "features": int(union.x.size(1)),
            "classes": int(union.y.max()) + 1,
            **{s: int(sum(int(g.target_mask.sum()) for g in self.graphs[s])) for s in STAGES},
            "isolated": int((deg == 0).sum()),
            "mean_degree": round(float(deg.mean()), 3),
            "max_degree": int(deg.max()),
        }
        shown = Batch.from_data_list(self.graphs["test"][: self.analysis_graphs])
        empty = torch.zeros(shown.num_nodes, dtype=torch.bool)
        self.data = Data(
            x=shown.x, edge_index=shown.edge_index, y=shown.y, batch=shown.batch,
            train_mask=empty, val_mask=empty.clone(), test_mask=shown.target_mask,
        )  # fmt: skip
        if self.verbose:
            print(self.report())

    @property
    def num_features(self) -> int:
        return self.stats["features"]

    def report(self) -> str:
        s, g = self.stats, self.stats["graphs"]
        return (
            f"{s['dataset']}: {g['train']}/{g['val']}/{g['test']} graphs (train/val/test), "
            f"{s['nodes']} nodes, {s['edges']} edges, {s['features']} features, "
            f"{s['classes']} classes | scored nodes {s['train']}/{s['val']}/{s['test']} | "
            f"batches of {self.batch_size} graphs"
        )

    # --- loaders -------------------------------------------------------------------------
    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        graphs = self.graphs["train"]
        sampler = EpochShuffle(len(graphs), self.seed, self._epoch)
        return DataLoader(graphs, batch_size=self.batch_size, sampler=sampler)

    def eval_dataloader(self, stage: str) -> DataLoader:
        """The graphs of ``stage`` in their stored order, in evaluation batches (under
        DDP, each rank its :class:`RankShare`)."""
        graphs = self.graphs[stage]
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return DataLoader(graphs, batch_size=self.eval_batch_size)
        if len(graphs) < world:
            raise UserError(
                f"{len(graphs)} {stage} graphs cannot be shared out between {world} "
                "processes (each needs one); generate more graphs or use fewer processes"
            )
        share = RankShare(len(graphs), self.trainer.global_rank, world)
        return DataLoader(graphs, batch_size=self.eval_batch_size, sampler=share)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
