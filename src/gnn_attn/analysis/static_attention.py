r"""How *static* a layer's attention is (Brody et al., 2022): do all queries rank their
shared neighbours in one global order?

GAT scores an edge :math:`j \to i` as
:math:`\mathrm{LeakyReLU}(\mathbf{a}_d^\top\mathbf{W}\mathbf{h}_i + \mathbf{a}_s^\top
\mathbf{W}\mathbf{h}_j)`; LeakyReLU is monotonic, so every query :math:`i` ranks its
neighbours by :math:`\mathbf{a}_s^\top\mathbf{W}\mathbf{h}_j` alone: one ranking for
all queries. GATv2 applies the nonlinearity before :math:`\mathbf{a}`, so the ranking
may depend on the query ("dynamic" attention). :func:`static_score` measures which of
the two a trained layer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TIE = 1e-6  # |α_ij − α_ij'| ≤ TIE · max(α_ij, α_ij'): the query ranks j and j' equal


@dataclass
class StaticScore:
    """The result of :func:`static_score` for one layer.

    Attributes:
        per_head: :math:`(K,)` share of compared neighbour pairs that both queries rank
            in the same order (NaN for a head whose every pair is a tie).
        compared: comparisons drawn (query pair × shared neighbour pair).
        available: comparisons the graph holds (among the queries kept).
        query_share: share of the target nodes kept as queries (1.0 = all).
        seed: the seed of the samples.
    """

    per_head: Tensor
    compared: int
    available: int
    query_share: float
    seed: int

    @property
    def mean(self) -> float:
        """Mean over the heads that have untied comparisons (NaN if none)."""
        ok = ~self.per_head.isnan()
        return float(self.per_head[ok].mean()) if bool(ok.any()) else math.nan

    def as_dict(self) -> dict[str, object]:
        return {
            "per_head": [round(float(v), 6) for v in self.per_head],
            "mean": round(self.mean, 6),
            "compared": self.compared,
            "available": self.available,
            "query_share": round(self.query_share, 6),
            "seed": self.seed,
        }


def group_pairs(
    sizes: Tensor, limit: int | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, int]:
    r"""Pairs of positions :math:`(a, b)`, :math:`a < b`, inside consecutive groups.

    ``sizes`` :math:`(G,)`: the lengths of consecutive runs of a sorted array of
    :math:`T = \sum_g s_g` items. Returns the first and second positions :math:`(P,)`
    and the number of pairs :math:`\sum_g s_g(s_g-1)/2`: all of them, or, when that is
    more than ``limit``, ``limit`` pairs drawn uniformly (with replacement) with
    ``generator``."""
    starts = torch.cumsum(sizes, 0) - sizes
    local = torch.arange(int(sizes.sum())) - torch.repeat_interleave(starts, sizes)
    later = torch.repeat_interleave(sizes, sizes) - 1 - local  # partners after each item
    ends = torch.cumsum(later, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if limit is None or total <= limit:
        first = torch.repeat_interleave(torch.arange(later.numel()), later)
        offset = torch.arange(total) - torch.repeat_interleave(ends - later, later)
    else:
        draw = torch.randint(0, total, (limit,), generator=generator)
        first = torch.searchsorted(ends, draw, right=True)
        offset = draw - (ends - later)[first]
    return first, first + 1 + offset, total


def static_score(
    edge_index: Tensor,
    alpha: Tensor,
    max_comparisons: int = 200_000,
    max_triples: int = 2_000_000,
    seed: int = 0,
) -> StaticScore:
    r"""The share of (query pair, shared neighbour pair) comparisons ranked alike.

    For targets (queries) :math:`i \ne i'` with common in-neighbours :math:`j \ne j'`,
    the comparison is *concordant* when
    :math:`(\alpha_{ij} - \alpha_{ij'})(\alpha_{i'j} - \alpha_{i'j'}) > 0` and
    *discordant* when it is :math:`< 0` (a tie of either query, within :data:`TIE`
    relative, counts as neither). The score of a head is concordant / (concordant +
    discordant): **1 = static** (one global ranking, what GAT computes whatever its
    weights), **≈ 0.5** = the queries' rankings are unrelated, below = opposed.

    Cost: the comparisons are enumerated from each neighbour's pairs of targets
    (:math:`\sum_j d_j(d_j-1)/2` "triples"). Beyond ``max_triples`` the queries are a
    seeded random subset (each kept with probability :math:`\sqrt{\text{max\_triples}/T}`,
    so each comparison survives with the same probability); beyond ``max_comparisons``
    comparisons, that many are drawn uniformly, seeded.

    Args:
        edge_index: :math:`(2, E)` edges source → target (the layer's, self-loops
            included: a self-loop is a neighbour like any other).
        alpha: :math:`(E, K)` attention of each edge and head.
        max_comparisons: comparisons kept at most.
        max_triples: triples enumerated at most.
        seed: seed of the samples.
    """
    g = torch.Generator().manual_seed(seed)
    src, dst = edge_index[0].cpu(), edge_index[1].cpu()
    alpha = alpha.detach().float().cpu()
    if alpha.dim() == 1:
        alpha = alpha.view(-1, 1)
    n = int(edge_index.max()) + 1 if edge_index.numel() else 0
    out_deg = torch.bincount(src, minlength=n)
    triples = int((out_deg * (out_deg - 1) // 2).sum())
    share = 1.0
    keep = torch.ones(src.numel(), dtype=torch.bool)
    if triples > max_triples:
        share = math.sqrt(max_triples / triples)
        kept_queries = torch.rand(n, generator=g) < share
        keep = kept_queries[dst]
    edges = torch.nonzero(keep).view(-1)
    edges = edges[torch.argsort(src[edges], stable=True)]  # grouped by neighbour j
    sizes = torch.bincount(src[edges], minlength=n)
    sizes = sizes[sizes > 0]
    a, b, _ = group_pairs(sizes)  # two edges from one neighbour j to two queries
    e1, e2 = edges[a], edges[b]
    lower = dst[e1] < dst[e2]
    first, second = torch.where(lower, e1, e2), torch.where(lower, e2, e1)  # query i < i'
    distinct = dst[first] != dst[second]
    first, second = first[distinct], second[distinct]
    key = dst[first] * n + dst[second]  # the query pair
    order = torch.argsort(key, stable=True)
    first, second = first[order], second[order]
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    t1, t2, available = group_pairs(counts, max_comparisons, g)  # two neighbours j, j'
    d_i = _difference(alpha[first[t1]], alpha[first[t2]])  # query i: α_ij − α_ij'
    d_k = _difference(alpha[second[t1]], alpha[second[t2]])  # query i': α_i'j − α_i'j'
    product = d_i * d_k
    agree = (product > 0).sum(0).float()
    disagree = (product < 0).sum(0).float()
    per_head = agree / (agree + disagree)  # 0/0 = NaN: every comparison tied
    return StaticScore(per_head, int(t1.numel()), available, share, seed)


def _difference(x: Tensor, y: Tensor) -> Tensor:
    """``x − y``, zero where the two are equal within :data:`TIE` (relative)."""
    d = x - y
    return torch.where(d.abs() <= TIE * torch.maximum(x, y), torch.zeros_like(d), d)
