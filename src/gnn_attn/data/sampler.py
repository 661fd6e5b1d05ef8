r"""Neighbour-sampled mini-batches (GraphSAGE-style), in plain PyTorch.

PyG's :class:`~torch_geometric.loader.NeighborLoader` needs ``pyg-lib`` or
``torch-sparse`` for its sampling kernel; neither has wheels on PyPI for current torch
releases. The sampler here is vectorised PyTorch (a handful of tensor ops per hop, no
Python loop over nodes) and produces the same batch layout as ``NeighborLoader``: the
seed nodes first, then the nodes each hop added; ``n_id`` maps local to global ids and
``batch_size`` counts the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    r"""Rows ``index`` of ``x`` :math:`(N, F)`, dense or CSR, in the same layout.

    For CSR, the selected rows' stored entries are copied with one vectorised gather:
    :math:`O(\text{nnz of the rows})`.
    """
    if x.layout != torch.sparse_csr:
        return x.index_select(0, index)
    crow, col, val = x.crow_indices(), x.col_indices(), x.values()
    start = crow.index_select(0, index)
    counts = crow.index_select(0, index + 1) - start
    new_crow = torch.zeros(index.numel() + 1, dtype=crow.dtype, device=x.device)
    new_crow[1:] = counts.cumsum(0)
    total = int(new_crow[-1])
    # position of every kept entry in the source: its row's start + its rank in the row
    shift = torch.repeat_interleave(start - new_crow[:-1], counts, output_size=total)
    pos = torch.arange(total, dtype=crow.dtype, device=x.device) + shift
    return torch.sparse_csr_tensor(
        new_crow, col.index_select(0, pos), val.index_select(0, pos), (index.numel(), x.size(1))
    )


class NeighborSampler:
    r"""Uniform sampling of incoming neighbours, hop by hop, without replacement.

    For seeds :math:`S_0` and fan-outs :math:`(k_1, \dots, k_L)`, hop :math:`l` draws for
    every node first reached at hop :math:`l-1` up to :math:`k_l` of its in-neighbours
    (all of them when :math:`k_l < 0` or the node has fewer), uniformly without
    replacement. The batch's graph holds exactly the sampled edges (message direction
    source → target), as PyG's ``NeighborLoader`` does; with all fan-outs :math:`-1`
    the seeds' outputs of an :math:`L`-layer GNN equal the full-graph outputs.

    Args:
        edge_index: :math:`(2, E)` edges ``[source, target]`` of the whole graph.
        num_nodes: :math:`N`.

    The in-neighbour lists are kept as CSR (``ptr`` :math:`(N + 1)`, ``nbr`` :math:`(E)`),
    built once: :math:`O(E \log E)`.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        src, dst = edge_index
        order = torch.argsort(dst, stable=True)
        self.nbr = src[order].contiguous()
        self.ptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        self.ptr[1:] = torch.bincount(dst, minlength=num_nodes).cumsum(0)
        self.num_nodes = num_nodes
        self._local = torch.full((num_nodes,), -1, dtype=torch.long)  # global → batch id

    def _pick(self, nodes: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sampled in-edges ``(source, target)`` (global ids) of ``nodes``."""
        start = self.ptr.index_select(0, nodes)
        deg = self.ptr.index_select(0, nodes + 1) - start
        seg_all = torch.arange(nodes.numel())
        if k >= 0:
            small = deg <= k
            take_all, sample = seg_all[small], seg_all[~small]
        else:
            take_all, sample = seg_all, seg_all[:0]
        pos = [_ranges(start[take_all], deg[take_all])]
        owner = [torch.repeat_interleave(take_all, deg[take_all])]
        if sample.numel():
            # a random key per candidate edge; the k smallest keys of each node win
            d = deg[sample]
            total = int(d.sum())
            seg = torch.repeat_interleave(torch.arange(sample.numel()), d, output_size=total)
            keys = torch.rand(total, generator=gen, dtype=torch.float64) + seg
            order = torch.argsort(keys)
            offsets = torch.cumsum(d, 0) - d
            rank = torch.arange(total) - offsets.repeat_interleave(d, output_size=total)
            chosen = order[rank < k]  # sorted by segment, so ranks line up with ``order``
            cand = _ranges(start[sample], d)
            pos.append(cand[chosen])
            owner.append(sample[seg[chosen]])
        pos_t, owner_t = torch.cat(pos), torch.cat(owner)
        return self.nbr.index_select(0, pos_t), nodes.index_select(0, owner_t)

    def sample(
        self, seeds: Tensor, fanouts: Sequence[int], gen: torch.Generator
    ) -> tuple[Tensor, Tensor, list[int], list[int]]:
        """``(n_id, edge_index, nodes_per_hop, edges_per_hop)``: the batch's nodes (seeds
        first, then each hop's new nodes; unique), its edges in batch-local ids (hop 1's
        edges first, then hop 2's…), and how many nodes (seeds = hop 0) and edges each
        hop added (PyG's ``num_sampled_nodes``/``num_sampled_edges``)."""
        local = self._local
        local[seeds] = torch.arange(seeds.numel())
        n_ids, srcs, dsts = [seeds], [], []
        count, frontier = seeds.numel(), seeds
        for k in fanouts:
            src, dst = self._pick(frontier, int(k), gen)
            new = torch.unique(src[local.index_select(0, src) < 0])
            local[new] = torch.arange(count, count + new.numel())
            count += new.numel()
            n_ids.append(new)
            srcs.append(local.index_select(0, src))
            dsts.append(local.index_select(0, dst))
            frontier = new
        n_id = torch.cat(n_ids)
        local[n_id] = -1  # reset for the next batch
        if srcs:
            edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)])
        else:  # no hops (an MLP's receptive field): the seeds alone
            edge_index = torch.empty(2, 0, dtype=torch.long)
        return n_id, edge_index, [t.numel() for t in n_ids], [t.numel() for t in srcs]


def _ranges(start: Tensor, length: Tensor) -> Tensor:
    """Concatenation of ``arange(s, s + n)`` for every ``(s, n)``."""
    total = int(length.sum())
    offsets = torch.cumsum(length, 0) - length
    shift = torch.repeat_interleave(start - offsets, length, output_size=total)
    return torch.arange(total) + shift


class NeighborBatches:
    r"""An iterable of sampled mini-batches over a set of seed nodes (one epoch per
    ``iter()``).

    Each batch is a :class:`~torch_geometric.data.Data` with ``x`` :math:`(n, F)` (the
    batch's rows of the graph's features, CSR or dense), ``edge_index`` :math:`(2, e)`,
    ``y`` :math:`(n,)`, ``n_id`` :math:`(n,)` (global ids), ``batch_size`` :math:`B`
    (rows ``0..B-1`` are the seeds, the nodes the loss and metrics use), and
    ``num_sampled_nodes``/``num_sampled_edges`` (per hop, for layer-wise trimming).

    With ``world_size > 1`` (DDP) the seeds are split between ranks: all ranks draw the
    same permutation for an epoch and rank :math:`r` takes every ``world_size``-th seed
    from position :math:`r`. ``pad`` repeats a few seeds so that every rank has the same
    number of batches (needed for training: DDP synchronises every step).

    Args:
        data: the whole graph (``x``, ``edge_index``, ``y``).
        sampler: its :class:`NeighborSampler`.
        seeds: :math:`(S,)` global ids of the seed nodes (e.g. the training nodes).
        fanouts: neighbours drawn per hop (``-1``: all).
        batch_size: seeds per batch.
        shuffle: a new seed order every epoch.
        seed: base of the random streams (order: ``seed``, epoch; sampling: also the rank).
        epoch: a callable returning the current epoch (so that a resumed run draws the
            same batches).
        rank, world_size, pad: see above.
    """

    def __init__(
        self,
        data: Data,
        sampler: NeighborSampler,
        seeds: Tensor,
        fanouts: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
    ) -> None:
        self.data, self.neighbors, self.seeds = data, sampler, seeds
        self.fanouts, self.batch_size, self.shuffle = list(fanouts), batch_size, shuffle
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size, self.pad = rank, world_size, pad

    def _share(self, epoch: int) -> Tensor:
        seeds = self.seeds
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            seeds = seeds[torch.randperm(seeds.numel(), generator=gen)]
        if self.world_size == 1:
            return seeds
        if self.pad:
            per_rank = math.ceil(seeds.numel() / self.world_size)
            extra = per_rank * self.world_size - seeds.numel()
            seeds = torch.cat([seeds, seeds[:extra]])
        return seeds[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = self.seeds.numel()
        if self.world_size > 1:
            n = (
                math.ceil(n / self.world_size)
                if self.pad
                else len(range(self.rank, n, self.world_size))
            )
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Data]:
        epoch = self.epoch()
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 64 + self.rank)
        for chunk in self._share(epoch).split(self.batch_size):
            yield self.batch(chunk, gen)

    def batch(self, seeds: Tensor, gen: torch.Generator) -> Data:
        n_id, edge_index, nodes, edges = self.neighbors.sample(seeds, self.fanouts, gen)
        return Data(
            x=gather_rows(self.data.x, n_id),
            edge_index=edge_index,
            y=self.data.y.index_select(0, n_id),
            n_id=n_id,
            batch_size=seeds.numel(),
            num_sampled_nodes=nodes,
            num_sampled_edges=edges,
            num_nodes=n_id.numel(),
        )


def receptive_field(data: Data, seeds: Tensor, hops: int) -> Data:
    """``seeds`` with their complete ``hops``-hop in-neighbourhood of ``data``, as one
    batch in the :class:`NeighborBatches` layout (built on the CPU, returned on
    ``data``'s device): what an ``hops``-layer GNN reads to compute the seeds' outputs."""
    device = data.edge_index.device
    cpu = Data(x=data.x.cpu(), y=data.y.cpu(), edge_index=data.edge_index.cpu())
    sampler = NeighborSampler(cpu.edge_index, data.num_nodes)
    batches = NeighborBatches(
        cpu, sampler, seeds.cpu(), [-1] * hops, seeds.numel(), False, 0, lambda: 0
    )
    return batches.batch(seeds.cpu(), torch.Generator()).to(device)
