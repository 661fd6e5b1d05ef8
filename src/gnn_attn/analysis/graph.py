"""Per-node quantities for the pictures: degree buckets, attention entropy."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import degree, scatter


def node_degree(edge_index: Tensor, num_nodes: int) -> Tensor:
    """In-degree of every node on ``edge_index`` as stored (self-loops excluded),
    :math:`(N,)` long. Planetoid graphs are symmetric, so this is the degree."""
    src, dst = edge_index
    keep = src != dst
    return degree(dst[keep], num_nodes=num_nodes, dtype=torch.long)


def degree_buckets(deg: Tensor, correct: Tensor, max_bucket: int) -> list[dict[str, object]]:
    """Accuracy per degree bucket ``0, 1, …, max_bucket - 1, ≥ max_bucket``.

    Args:
        deg: :math:`(M,)` degrees of the evaluated nodes.
        correct: :math:`(M,)` bool, prediction right.
        max_bucket: first degree pooled into the last bucket.

    Returns one dict per non-empty bucket: ``bucket`` (label), ``low`` (smallest degree),
    ``count``, ``correct``, ``accuracy``.
    """
    rows = []
    for low in range(max_bucket + 1):
        in_bucket = deg >= low if low == max_bucket else deg == low
        count = int(in_bucket.sum())
        if count == 0:
            continue
        right = int(correct[in_bucket].sum())
        label = f"≥{low}" if low == max_bucket else str(low)
        rows.append(
            {
                "bucket": label,
                "low": low,
                "count": count,
                "correct": right,
                "accuracy": right / count,
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


def uniform_entropy(deg: Tensor) -> Tensor:
    r""":math:`\log(d_i + 1)`: the entropy of uniform attention over :math:`d_i`
    neighbours and the self-loop — what GCN-style averaging amounts to."""
    return torch.log(deg.to(torch.float) + 1.0)


def self_attention_share(edge_index: Tensor, alpha: Tensor) -> Tensor:
    """Mean attention a node gives itself (its self-loop), per head, :math:`(K,)`."""
    loops = edge_index[0] == edge_index[1]
    return alpha[loops].mean(dim=0)


__all__ = [
    "attention_entropy",
    "degree_buckets",
    "node_degree",
    "self_attention_share",
    "uniform_entropy",
]
