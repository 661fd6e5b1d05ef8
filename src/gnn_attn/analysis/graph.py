"""Per-node quantities for the pictures: degree buckets, attention entropy."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.utils import degree, scatter


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    r"""Wilson score interval of a proportion :math:`k/n` (95 % for :math:`z = 1.96`):

    .. math:: \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n}
        + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}

    Unlike :math:`\hat p \pm z\sqrt{\hat p(1-\hat p)/n}` it stays inside [0, 1] and is
    not empty at :math:`k = 0` or :math:`k = n` (small degree buckets)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def degree_buckets(deg: Tensor, correct: Tensor, max_bucket: int) -> list[dict[str, object]]:
    """Accuracy per degree bucket ``0, 1, …, max_bucket - 1, ≥ max_bucket``.

    Args:
        deg: :math:`(M,)` degrees of the evaluated nodes.
        correct: :math:`(M,)` bool, prediction right.
        max_bucket: first degree pooled into the last bucket.

    Returns one dict per non-empty bucket: ``bucket`` (label), ``low`` (smallest degree),
    ``count``, ``correct``, ``accuracy``, and its 95 % Wilson interval ``ci_low``,
    ``ci_high`` (:func:`wilson_interval`).
    """
    rows = []
    for low in range(max_bucket + 1):
        in_bucket = deg >= low if low == max_bucket else deg == low
        count = int(in_bucket.sum())
        if count == 0:
            continue
        right = int(correct[in_bucket].sum())
        label = f"≥{low}" if low == max_bucket else str(low)
        ci_low, ci_high = wilson_interval(right, count)
        rows.append(
            {
                "bucket": label,
                "low": low,
                "count": count,
                "correct": right,
                "accuracy": right / count,
                "ci_low": ci_low,
                "ci_high": ci_high,
            }
        )
    return rows


def attention_entropy(edge_index: Tensor, alpha: Tensor, num_nodes: int) -> Tensor:
    r"""Entropy of every node's attention distribution, per head.

    .. math:: H_i^k = -\sum_{j} \alpha^k_{ij} \log \alpha^k_{ij}

    over the incoming edges of :math:`i` (``edge_index[1] == i``).

    Shapes: ``edge_index`` :math:`(2, E')`, ``alpha`` :math:`(E', K)` → :math:`(N, K)`.
    """
    plogp = alpha * torch.log(alpha.clamp_min(1e-30))
    return -scatter(plogp, edge_index[1], dim=0, dim_size=num_nodes, reduce="sum")


def attended_degree(edge_index: Tensor, num_nodes: int) -> Tensor:
    r""":math:`a_i`: the number of edges node :math:`i` attends over (``edge_index[1] ==
    i``, self-loops included when the layer has them), :math:`(N,)` long."""
    return degree(edge_index[1], num_nodes=num_nodes, dtype=torch.long)


def uniform_entropy(attended: Tensor) -> Tensor:
    r""":math:`\log a_i`: the entropy of uniform attention over the :math:`a_i` edges a
    node attends over (:func:`attended_degree`; :math:`\log(d_i + 1)` for a layer that
    adds self-loops) — what GCN-style averaging amounts to. 0 where :math:`a_i \le 1`."""
    return torch.log(attended.to(torch.float).clamp_min(1.0))


def self_attention_share(edge_index: Tensor, alpha: Tensor) -> Tensor | None:
    """Mean attention a node gives itself (its self-loop), per head, :math:`(K,)`;
    ``None`` for a layer without self-loops."""
    loops = edge_index[0] == edge_index[1]
    if not bool(loops.any()):
        return None
    return alpha[loops].mean(dim=0)


__all__ = [
    "attended_degree",
    "attention_entropy",
    "degree_buckets",
    "self_attention_share",
    "uniform_entropy",
    "wilson_interval",
]
