r"""A synthetic citation-like graph of any size: a stochastic block model with
class-dependent sparse bag-of-words features, generated once per setting and cached."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from gnn_attn.data.base import NodeDataModule
from gnn_attn.data.cache import cache_path, read_cache, write_cache

FORMAT = 1  # bump when the generator changes, so that old cache files are not reused


def make_sbm(
    num_nodes: int,
    num_classes: int = 10,
    avg_degree: float = 10.0,
    homophily: float = 0.7,
    num_features: int = 500,
    words_per_node: int = 20,
    topic_words: int = 50,
    topic_share: float = 0.25,
    split: tuple[float, float, float] = (0.1, 0.05, 0.1),
    seed: int = 0,
) -> Data:
    r"""Generate a planted-partition stochastic block model with text-like features.

    - **Classes**: :math:`y_i` uniform over ``num_classes``.
    - **Edges**: :math:`\tfrac12 N\bar d` undirected edges; each picks a source uniformly
      and, with probability ``homophily``, a target of the source's class, otherwise a
      target of a uniformly random class (so the edge homophily is
      :math:`h + (1-h)/C`). Self-loops and duplicates are removed; both directions kept.
    - **Features**: every class owns ``topic_words`` random words of a
      ``num_features``-word vocabulary; a node draws ``words_per_node`` words, each from
      its class's topic with probability ``topic_share``, else from the whole vocabulary.
      ``x`` is the row-normalised word count, stored as CSR.
    - **Split**: a random ``split`` = (train, val, test) fraction of the nodes.

    Same arguments ⇒ the same graph (a private ``torch.Generator`` seeded with ``seed``).

    Returns:
        :class:`~torch_geometric.data.Data` with ``x`` :math:`(N, F)` CSR,
        ``edge_index`` :math:`(2, E)`, ``y`` :math:`(N,)`, ``train_mask``, ``val_mask``,
        ``test_mask`` :math:`(N,)`.
    """
    g = torch.Generator().manual_seed(seed)
    n, c = num_nodes, num_classes
    y = torch.randint(0, c, (n,), generator=g)
    by_class = torch.argsort(y, stable=True)
    size = torch.bincount(y, minlength=c)
    start = torch.cumsum(size, 0) - size

    m = round(n * avg_degree / 2)
    src = torch.randint(0, n, (m,), generator=g)
    same = torch.rand(m, generator=g) < homophily
    cls = torch.where(same, y[src], torch.randint(0, c, (m,), generator=g))
    pick = (torch.rand(m, generator=g) * size[cls]).long().clamp_max(size[cls] - 1)
    dst = by_class[start[cls] + pick]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    key = torch.unique(torch.cat([src * n + dst, dst * n + src]))  # sorted: by target row
    edge_index = torch.stack([key % n, key // n])

    topics = torch.stack(
        [torch.randperm(num_features, generator=g)[:topic_words] for _ in range(c)]
    )
    k = words_per_node
    rows = torch.arange(n).repeat_interleave(k)
    from_topic = torch.rand(n * k, generator=g) < topic_share
    topic_word = topics[
        y.repeat_interleave(k), torch.randint(0, topic_words, (n * k,), generator=g)
    ]
    any_word = torch.randint(0, num_features, (n * k,), generator=g)
    words = torch.where(from_topic, topic_word, any_word)
    cell, count = torch.unique(rows * num_features + words, return_counts=True)
    row, col = cell // num_features, cell % num_features
    crow = torch.zeros(n + 1, dtype=torch.long)
    crow[1:] = torch.bincount(row, minlength=n).cumsum(0)
    x = torch.sparse_csr_tensor(crow, col, count.float() / k, (n, num_features))

    order = torch.randperm(n, generator=g)
    bounds = [round(f * n) for f in split]
    masks = []
    offset = 0
    for b in bounds:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[offset : offset + b]] = True
        masks.append(mask)
        offset += b
    return Data(
        x=x, edge_index=edge_index, y=y, train_mask=masks[0], val_mask=masks[1], test_mask=masks[2]
    )


class SyntheticDataModule(NodeDataModule):
    r"""A :func:`make_sbm` graph, generated once per setting and cached on disk.

    The cache file is ``<cache_dir>/sbm-<size>-<hash>.pt``, the hash covering every
    generator argument; a second run (or another DDP rank) loads it instead of
    generating (1 M nodes: ~5 s to generate, ~1 s to load).

    Args:
        num_nodes: :math:`N` (≥ 100).
        graph_seed: the generator's seed (the graph); the loader's ``seed`` is separate.
        cache_dir: folder of the cached graphs.
        **options: the other arguments of :func:`make_sbm` (``num_classes``,
            ``avg_degree``, ``homophily``, ``num_features``, ``words_per_node``,
            ``topic_words``, ``topic_share``, ``split``) and the loader arguments of
            :class:`~gnn_attn.data.base.NodeDataModule`.
    """

    def __init__(
        self,
        num_nodes: int = 10_000,
        graph_seed: int = 0,
        cache_dir: str = ".cache/synthetic",
        **options: Any,
    ) -> None:
        generator = inspect.signature(make_sbm).parameters
        graph = {k: options.pop(k) for k in list(options) if k in generator}
        loader_args = inspect.signature(NodeDataModule.__init__).parameters
        unknown = sorted(set(options) - set(loader_args))
        if unknown:
            raise TypeError(
                f"{unknown[0]} is not an option of data=synthetic; it takes "
                f"{', '.join(k for k in generator if k != 'seed')} and the loader's options"
            )
        super().__init__(**options)
        defaults = {k: p.default for k, p in generator.items() if k != "num_nodes"}
        self.params: dict[str, Any] = {**defaults, **graph, "num_nodes": num_nodes}
        self.params["seed"] = graph_seed
        self.params["split"] = tuple(float(f) for f in self.params["split"])
        _check_params(self.params)
        self.cache_dir = Path(cache_dir)
        self.name = f"SBM-{_human(num_nodes)}"

    @property
    def cache_file(self) -> Path:
        stem = f"sbm-{_human(self.params['num_nodes'])}"
        return cache_path(self.cache_dir, stem, self.params, FORMAT)

    def prepare_data(self) -> None:
        """Generate and cache the graph once (rank 0 only under DDP)."""
        if self.cache_file.is_file():
            return
        started = time.perf_counter()
        data = make_sbm(**self.params)
        x = data.x
        payload = {
            "crow": x.crow_indices(),
            "col": x.col_indices(),
            "val": x.values(),
            "shape": torch.tensor(x.shape),
            **{k: data[k] for k in ("edge_index", "y", "train_mask", "val_mask", "test_mask")},
        }
        write_cache(self.cache_file, payload)
        if self.verbose:
            took = time.perf_counter() - started
            print(f"generated {self.name} in {took:.1f} s → {self.cache_file}")

    def _load(self) -> Data:
        self.prepare_data()
        p = read_cache(self.cache_file)
        x = torch.sparse_csr_tensor(p["crow"], p["col"], p["val"], tuple(p["shape"].tolist()))
        return Data(
            x=x, **{k: p[k] for k in ("edge_index", "y", "train_mask", "val_mask", "test_mask")}
        )


def _check_params(p: dict[str, Any]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    need(
        isinstance(p["num_nodes"], int) and p["num_nodes"] >= 100,
        f"num_nodes must be ≥ 100 (got {p['num_nodes']})",
    )
    need(p["num_classes"] >= 2, f"num_classes must be ≥ 2 (got {p['num_classes']})")
    need(p["avg_degree"] > 0, f"avg_degree must be > 0 (got {p['avg_degree']})")
    need(0 <= p["homophily"] <= 1, f"homophily must be in [0, 1] (got {p['homophily']})")
    need(
        p["num_features"] >= 1 and p["words_per_node"] >= 1,
        "num_features and words_per_node must be ≥ 1",
    )
    need(1 <= p["topic_words"] <= p["num_features"], "topic_words must be in [1, num_features]")
    need(0 <= p["topic_share"] <= 1, f"topic_share must be in [0, 1] (got {p['topic_share']})")
    split = p["split"]
    need(
        len(split) == 3 and all(f > 0 for f in split) and sum(split) <= 1,
        f"split must be three fractions > 0 (train, val, test) summing to ≤ 1 (got {list(split)})",
    )


def _human(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)
