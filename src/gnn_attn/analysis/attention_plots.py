"""What the attention pictures of one run and of a sweep share: one graph's attention
matrix (computed and drawn) and the references of the static score."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data


def first_graph_matrix(data: Data, edge_index: Tensor, alpha: Tensor) -> dict[str, Tensor]:
    r"""The attention (mean over heads) of the first graph of a batch of graphs: its
    scored nodes (``test_mask``, rows) × the other nodes with an edge into them
    (columns, self-loops left out), both in node order.

    Shapes: ``edge_index`` :math:`(2, E)`, ``alpha`` :math:`(E, K)` → ``alpha``
    :math:`(R, C)` (0 where there is no edge), ``rows`` :math:`(R,)`, ``cols``
    :math:`(C,)` (node ids)."""
    edge_index, alpha = edge_index.cpu(), alpha.cpu()
    first = (data.batch == 0).cpu()
    rows = torch.nonzero(first & data.test_mask.cpu()).view(-1)
    src, dst = edge_index
    into = torch.isin(dst, rows) & (src != dst)
    cols = torch.unique(src[into])
    matrix = torch.zeros(rows.numel(), cols.numel())
    r = torch.searchsorted(rows, dst[into])
    c = torch.searchsorted(cols, src[into])
    matrix[r, c] = alpha[into].mean(dim=1)
    return {"alpha": matrix, "rows": rows, "cols": cols}


def draw_matrix(ax: Any, alpha: Tensor, vmax: float | None = None) -> Any:
    """Heat map of a :func:`first_graph_matrix` ``alpha`` into ``ax`` (queries as rows,
    their neighbours as columns); returns the image, for a colour bar."""
    a = alpha.numpy()
    top = vmax if vmax is not None else max(float(a.max()), 1e-6)
    image = ax.imshow(a, cmap="viridis", vmin=0, vmax=top)
    ax.set_xlabel("neighbour")
    ax.set_ylabel("query (scored node)")
    return image


def static_references(ax: Any) -> None:
    """The two references of a static-score axis: 1 (one global ranking: GAT, by
    construction) and 0.5 (unrelated rankings), on a 0–1.25 scale."""
    ax.axhline(1.0, ls="--", color="black", lw=1, label="1 = static (GAT, by theorem)")
    ax.axhline(0.5, ls=":", color="gray", lw=1, label="0.5 = unrelated rankings")
    ax.set_ylim(0, 1.25)
