"""The layer stack shared by every backbone: dropout → layer → (+ residual) → activation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gnn_attn.models.sparse import dropout

ACTIVATIONS = ("elu", "relu", "leaky_relu", "gelu", "silu", "tanh")
Hops = tuple[list[int], list[int]]  # nodes per hop (seeds first), edges per hop


def per_layer(value: int | bool | Sequence, n: int, name: str) -> list:
    """Broadcast a scalar to ``n`` hidden layers, or check a per-layer list has ``n`` items."""
    if isinstance(value, (int, bool, float, str)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(
            f"{name} has {len(values)} entries but the model has {n} hidden layers; "
            f"give one value or {n}"
        )
    return values


class LayerStack(nn.Module):
    r"""A stack of ``L`` graph (or plain) layers with the classic GNN wiring.

    .. math::
        \mathbf{H}^{(0)} = \mathbf{X},\qquad
        \mathbf{H}^{(l+1)} = \sigma\big(f_l(\mathrm{drop}_p(\mathbf{H}^{(l)}), \mathcal{E})
        + \mathbf{R}_l\,\mathrm{drop}_p(\mathbf{H}^{(l)})\big)

    with no activation :math:`\sigma` after the last layer (it returns logits) and the
    residual projection :math:`\mathbf{R}_l` only when ``residual=True`` (identity when the
    widths agree, else a bias-free linear map).

    Subclasses build ``self.layers`` (and record ``self.dims``, the width of every
    :math:`\mathbf{H}^{(l)}`), then call :meth:`_finish`. A layer is called as
    ``layer(h, edge_index)`` when ``self.graph_layers`` is true, else ``layer(h)``; a
    :class:`Readout` (a per-node linear map, after the graph layers) as ``layer(h)``.

    Args:
        dropout: probability :math:`p` of zeroing an input entry of every layer.
        activation: name of a function in :mod:`torch.nn.functional` (``elu``, ``relu``…).
        residual: add the (projected) layer input to the layer output.

    The first layer also takes CSR features (dropout then acts on the stored values only,
    see :mod:`gnn_attn.models.sparse`).

    Shapes:
        - input: node features :math:`(N, F_{in})` (dense or CSR), edges :math:`(2, E)`
        - output: logits :math:`(N, C)`; :meth:`embed` returns :math:`(N, F_{L-1})`, the
          input of the last layer (after the activation, before dropout).
    """

    graph_layers = True
    # trim sampled batches layer by layer (exact when a layer's output at a node depends
    # only on its in-edges, as for attention and MLPs; not for GCN's symmetric norm)
    trims = True
    supports_csr = True  # the first layer takes CSR features (see gnn_attn.models.sparse)
    has_attention = False  # forward(..., return_attention=True) returns the weights

    def __init__(self, dropout: float, activation: str, residual: bool) -> None:
        super().__init__()
        check_probability(dropout=dropout)
        check_bool(residual=residual)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation '{activation}' is unknown; choose one of {', '.join(ACTIVATIONS)}"
            )
        self.dropout = dropout
        self.act = getattr(F, activation)
        self.residual = residual
        self.layers = nn.ModuleList()
        self.dims: list[int] = []

    def _build_uniform(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        num_layers: int,
        make_layer: Callable[[int, int], nn.Module],
    ) -> None:
        """``num_layers`` layers ``make_layer(d_in, d_out)`` of one hidden width."""
        check_positive(hidden_channels=hidden_channels, num_layers=num_layers)
        self.dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        for d_in, d_out in zip(self.dims[:-1], self.dims[1:], strict=True):
            self.layers.append(make_layer(d_in, d_out))
        self._finish()

    def _finish(self) -> None:
        self.res = nn.ModuleList()
        if self.residual:
            for d_in, d_out in zip(self.dims[:-1], self.dims[1:], strict=True):
                lin = nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out, bias=False)
                self.res.append(lin)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        num_sampled_nodes_per_hop: list[int] | None = None,
        num_sampled_edges_per_hop: list[int] | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        r"""Logits :math:`(N, C)`.

        A sampled batch (nodes and edges sorted by hop, seeds first, as PyG's
        ``NeighborLoader`` and :class:`~gnn_attn.data.sampler.NeighborBatches` make them)
        passes its node and edge counts per hop: then each layer computes only what later
        layers read and the result is the seeds' logits :math:`(B, C)`.
        ``return_attention``: also return every layer's ``(edge_index (2, E'),
        alpha (E', K))``, from this same pass (layers that have attention weights).
        """
        hops = None
        if num_sampled_nodes_per_hop is not None and num_sampled_edges_per_hop is not None:
            hops = (list(num_sampled_nodes_per_hop), list(num_sampled_edges_per_hop))
        attention: list[tuple[Tensor, Tensor]] | None = [] if return_attention else None
        h = self._run(x, edge_index, hops, len(self.layers), attention)
        return (h, attention) if attention is not None else h

    def embed(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """The hidden representation fed to the last layer, :math:`(N, F_{L-1})`."""
        return self._run(x, edge_index, None, len(self.layers) - 1, None)

    def _run(
        self,
        h: Tensor,
        edge_index: Tensor,
        hops: Hops | None,
        upto: int,
        attention: list[tuple[Tensor, Tensor]] | None,
    ) -> Tensor:
        r"""The layer loop: layers ``0..upto-1``, each ``dropout → layer (+ residual) →
        activation`` (no activation after the last layer).

        For a sampled batch (``hops`` = nodes and edges per hop) layer :math:`i` of
        :math:`L` outputs only the nodes within :math:`r = \min(H, L-1-i)` hops of the
        seeds, from the edges of hops :math:`1..r+1`; both are prefixes of the batch's
        nodes and edges. ``attention``: a list that receives each layer's weights."""
        n_layers = len(self.layers)
        n_trim = sum(not isinstance(layer, Readout) for layer in self.layers)  # a read-out
        for i in range(upto):  # takes the last trimmed layer's rows (the seeds)
            n_out = None
            if hops is not None and self.trims and i < n_trim:
                n_out, edge_index = trim(hops, i, n_trim, edge_index)
            layer = self.layers[i]
            x = self._input(i, h)
            if not self.graph_layers or isinstance(layer, Readout):
                out = layer(x)
            else:
                kwargs: dict[str, Any] = {}
                if n_out is not None and getattr(layer, "bipartite", False):
                    kwargs["num_dst"] = n_out
                if attention is not None:
                    kwargs["return_attention_weights"] = True
                out = layer(x, edge_index, **kwargs)
                if attention is not None:
                    out, weights = out
                    attention.append(weights)
            if self.residual:
                out = out[:n_out] + self.res[i](self._residual_input(h, x))[:n_out]
            h = out if n_out is None else out[:n_out]
            if i < n_layers - 1:
                h = self.act(h)
        return h

    def _input(self, i: int, h: Tensor) -> Tensor:
        """What layer ``i`` is given: ``h`` after dropout, or ``h`` itself for a layer
        that drops its input per head (``input_dropout > 0``)."""
        if getattr(self.layers[i], "input_dropout", 0.0) > 0:
            return h
        return dropout(h, self.dropout, self.training)

    def _residual_input(self, h: Tensor, x: Tensor) -> Tensor:
        """The residual branch's input: the layer's dropped-out input ``x``, or a dropout
        of ``h`` of its own where the layer was given ``h`` itself (see :meth:`_input`)."""
        return x if x is not h else dropout(h, self.dropout, self.training)

    @property
    def receptive_hops(self) -> int:
        """How many hops of neighbours a node's output depends on (0 for an MLP): the
        graph layers (a :class:`Readout` is not one)."""
        if not self.graph_layers:
            return 0
        return sum(not isinstance(layer, Readout) for layer in self.layers)

    @property
    def exact_hops(self) -> int | None:
        """Hops of the receptive field on which the outputs of its seeds are exact (the
        data module then serves each split's receptive field instead of the whole
        graph); ``None`` where the output depends on more (GCN's degrees)."""
        return self.receptive_hops if self.trims else None

    @property
    def display_name(self) -> str:
        """The backbone's name for titles and reports."""
        return type(self).__name__


class Readout(nn.Linear):
    r"""A per-node linear read-out after a stack's graph layers,
    :math:`\mathbf{H}\mathbf{W}^\top + \mathbf{b}`: :math:`(N, F) \to (N, C)`; it reads
    no edges (a :class:`LayerStack` calls it as ``layer(h)``)."""


def trim(hops: Hops, i: int, n_layers: int, edge_index: Tensor) -> tuple[int, Tensor]:
    r"""What layer ``i`` of ``n_layers`` computes on a seeds-first batch (``hops`` = its
    nodes and edges per hop): the nodes within :math:`r = \min(H, L-1-i)` hops of the
    seeds (their count) and the edges of hops :math:`1..r+1` (a prefix of ``edge_index``)."""
    nodes, edges = hops
    reach = min(len(edges), n_layers - 1 - i)
    return sum(nodes[: reach + 1]), edge_index[:, : sum(edges[: reach + 1])]


def check_probability(**values: float) -> None:
    """``ValueError`` naming the first argument that is not a probability in [0, 1)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{name} must be in [0, 1) (got {v!r})")


def check_bool(**values: bool) -> None:
    """``TypeError`` naming the first argument that is not ``True``/``False``."""
    for name, v in values.items():
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be true or false (got {v!r})")


def check_positive(**values: int) -> None:
    """``ValueError`` naming the first argument that is not an integer ≥ 1."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer ≥ 1 (got {v!r})")
