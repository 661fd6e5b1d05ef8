r"""Brody et al.'s DictionaryLookup problem (ICLR 2022, Section 4.1): a task that
needs *dynamic* attention, which GATv2 has and GAT does not.

A graph holds :math:`k` key–value nodes and :math:`k` query nodes. Query :math:`i`
holds key :math:`i` and no value; key–value node :math:`j` holds key :math:`j` and value
:math:`\pi(j)` for a permutation :math:`\pi` of :math:`0..k-1`. Every key–value node
sends an edge to every query (a complete bipartite graph). A query must output the value
of the node with its own key: :math:`y_i = \pi(i)`. To attend to the right neighbour, the
query's ranking of its neighbours must depend on the query itself; GAT's attention ranks
them in one global order for every query, so it cannot (the theorem of Section 3).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Data

from gnn_attn.data.cache import cache_path, read_cache, write_cache
from gnn_attn.data.graph_set import STAGES, GraphSetDataModule

FORMAT = 1  # bump when the generator changes, so that old cache files are not reused


def lookup_graph(values: Tensor) -> Data:
    r"""The DictionaryLookup graph of one permutation ``values`` :math:`(k,)`.

    Nodes :math:`0..k-1` are the queries, :math:`k..2k-1` the key–value nodes. Features
    are the one-hot key (:math:`k` columns) concatenated with the one-hot value
    (:math:`k + 1` columns, the last one "empty", held by the queries), so that a linear
    first layer is the paper's sum of a key and a value embedding.

    Returns:
        :class:`~torch_geometric.data.Data` with ``x`` :math:`(2k, 2k+1)`,
        ``edge_index`` :math:`(2, k^2)` (key–value node → query), ``y`` :math:`(2k,)` (a
        query's answer; a key–value node's own value) and ``target_mask`` :math:`(2k,)`
        (the queries).
    """
    k = values.numel()
    keys = torch.arange(k)
    x = torch.zeros(2 * k, 2 * k + 1)
    x[keys, keys] = 1.0
    x[keys, 2 * k] = 1.0  # the query's value: empty
    x[k + keys, keys] = 1.0
    x[k + keys, k + values] = 1.0
    src = (k + keys).repeat_interleave(k)  # every key–value node ...
    dst = keys.repeat(k)  # ... to every query
    return Data(
        x=x,
        edge_index=torch.stack([src, dst]),
        y=torch.cat([values, values]),
        target_mask=torch.arange(2 * k) < k,
    )


def lookup_permutations(k: int, num_graphs: int, seed: int) -> Tensor:
    r"""The permutations :math:`(G, k)` behind the graphs, shuffled with ``seed``:
    all :math:`k!` when :math:`k! \le` ``num_graphs``, else ``num_graphs`` distinct ones
    drawn at random."""
    g = torch.Generator().manual_seed(seed)
    if math.factorial(k) <= num_graphs:
        perms = torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long)
        return perms[torch.randperm(len(perms), generator=g)]
    kept = torch.empty(0, k, dtype=torch.long)
    while len(kept) < num_graphs:
        draws = torch.rand(2 * num_graphs, k, generator=g).argsort(dim=1)
        merged = torch.cat([kept, draws])
        _, inverse = torch.unique(merged, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(merged), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(len(merged)), reduce="amin")
        kept = merged[first.sort().values]  # distinct rows, in the order they were drawn
    return kept[:num_graphs]


def split_sizes(n: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    """Graphs per split: ``round(fraction · n)``, at least one each; validation and test
    first, training takes at most what is left."""
    val, test = (max(1, round(f * n)) for f in split[1:])
    train = min(max(1, round(split[0] * n)), n - val - test)
    return train, val, test


class DictionaryLookupDataModule(GraphSetDataModule):
    r"""The DictionaryLookup graphs (:func:`lookup_graph`) of
    :math:`G = \min(k!, \text{num\_graphs})` permutations (:func:`lookup_permutations`),
    split by graph into train / val / test (``split`` fractions of :math:`G`), generated
    once per setting and cached on disk (``<cache_dir>/lookup-k<k>-<hash>.pt``: the
    permutations, in their seeded order; the split cuts that order).

    Args:
        k: keys per graph (≥ 2; :math:`k!` must allow one graph per split, so ≥ 3).
        num_graphs: at most this many graphs (all :math:`k!` when fewer).
        split: train, validation, test fractions of the graphs (> 0, sum ≤ 1).
        graph_seed: the permutations drawn and their split (the run's seed is separate).
        cache_dir: folder of the cached datasets.
        **loader: the loader arguments of
            :class:`~gnn_attn.data.graph_set.GraphSetDataModule`.
    """

    def __init__(
        self,
        k: int = 10,
        num_graphs: int = 2000,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        graph_seed: int = 0,
        cache_dir: str = ".cache/dictionary_lookup",
        **loader: int | bool,
    ) -> None:
        super().__init__(**loader)
        for key, value, low in (("k", k, 2), ("num_graphs", num_graphs, 3)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer ≥ {low} (got {value!r})")
        fractions = tuple(float(f) for f in split)
        if len(fractions) != 3 or min(fractions) <= 0 or sum(fractions) > 1 + 1e-9:
            raise ValueError(
                f"split must be three fractions > 0 (train, val, test) summing to ≤ 1 "
                f"(got {list(split)})"
            )
        graphs = min(math.factorial(k), num_graphs)
        if graphs < 3:
            raise ValueError(
                f"k={k} allows only {graphs} distinct graphs ({k}! permutations of the "
                "values); the split by graph needs one per split, so k ≥ 3"
            )
        if split_sizes(graphs, fractions)[0] < 1:
            raise ValueError(
                f"{graphs} graphs cannot be split {list(split)} with one graph or more per "
                "split; raise num_graphs or k"
            )
        self.k, self.num_graphs, self.split = k, graphs, fractions
        self.graph_seed = graph_seed
        self.cache_dir = Path(cache_dir)
        self.name = f"DictionaryLookup-k{k}"

    @property
    def cache_file(self) -> Path:
        params = {"k": self.k, "num_graphs": self.num_graphs, "seed": self.graph_seed}
        return cache_path(self.cache_dir, f"lookup-k{self.k}", params, FORMAT)

    @property
    def class_names(self) -> list[str]:
        return [f"value {v}" for v in range(self.k)]

    def prepare_data(self) -> None:
        """Draw and cache the permutations once (every DDP rank may call it: the file is
        written atomically, and a rank that finds it reads it)."""
        if self.cache_file.is_file():
            return
        started = time.perf_counter()
        perms = lookup_permutations(self.k, self.num_graphs, self.graph_seed)
        write_cache(self.cache_file, {"permutations": perms})
        if self.verbose:
            took = time.perf_counter() - started
            print(f"generated {self.name} in {took:.1f} s → {self.cache_file}")

    def _load(self) -> dict[str, list[Data]]:
        self.prepare_data()
        perms = read_cache(self.cache_file)["permutations"]
        sizes = split_sizes(len(perms), self.split)
        bounds = [0, *itertools.accumulate(sizes)]
        return {
            stage: [lookup_graph(p) for p in perms[bounds[i] : bounds[i + 1]]]
            for i, stage in enumerate(STAGES)
        }
