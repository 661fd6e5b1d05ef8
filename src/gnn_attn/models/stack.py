"""The layer stack shared by every backbone: dropout → layer → (+ residual) → activation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from gnn_attn.errors import UserError
from gnn_attn.models.sparse import dropout

ACTIVATIONS = ("elu", "relu", "leaky_relu", "gelu", "silu", "tanh")
Hops = tuple[list[int], list[int]]  # nodes per hop (seeds first), edges per hop


def per_layer(value: int | bool | Sequence, n: int, name: str) -> list:
    """Broadcast a scalar to ``n`` hidden layers, or check a per-layer list has ``n`` items."""
    if isinstance(value, (int, bool, float, str)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise UserError(
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
    ``layer(h, edge_index)`` when ``self.graph_layers`` is true, else ``layer(h)``.

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

    def __init__(self, dropout: float, activation: str, residual: bool) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(
                f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}"
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
        _check_positive(hidden=hidden_channels, layers=num_layers)
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

    def _layer(self, i: int, h: Tensor, edge_index: Tensor) -> Tensor:
        h = dropout(h, self.dropout, self.training)
        out = self.layers[i](h, edge_index) if self.graph_layers else self.layers[i](h)
        if self.residual:
            out = out + self.res[i](h)
        return out

    def _trim(self, i: int, h: Tensor, edge_index: Tensor, hops: Hops) -> tuple[Tensor, Tensor]:
        r"""After layer ``i`` of a sampled batch, keep the nodes and edges later layers read.

        Layer :math:`i+1` needs outputs only for nodes within :math:`k = \min(H, L-i-2)`
        hops of the seeds, so it needs inputs for nodes within :math:`k+1` hops and the
        edges of hops :math:`1..k+1` (which point into them). Nodes and edges come sorted
        by hop (:class:`~gnn_attn.data.sampler.NeighborSampler`), so both are prefixes.
        """
        nodes, edges = hops
        keep = min(len(edges), len(self.layers) - i - 2)
        return h[: sum(nodes[: keep + 2])], edge_index[:, : sum(edges[: keep + 1])]

    def _run(self, h: Tensor, edge_index: Tensor, hops: Hops | None, upto: int) -> Tensor:
        for i in range(upto):
            h = self._layer(i, h, edge_index)
            if i < len(self.layers) - 1:
                h = self.act(h)
                if hops is not None and self.trims:
                    h, edge_index = self._trim(i, h, edge_index, hops)
        return h

    def embed(self, x: Tensor, edge_index: Tensor, hops: Hops | None = None) -> Tensor:
        """The hidden representation fed to the last layer, :math:`(N, F_{L-1})` (with
        ``hops``: for the nodes within one hop of the seeds)."""
        return self._run(x, edge_index, hops, len(self.layers) - 1)

    def forward(self, x: Tensor, edge_index: Tensor, hops: Hops | None = None) -> Tensor:
        """Logits :math:`(N, C)`. For a sampled batch (``hops`` = nodes and edges per hop)
        the layers are trimmed as they go (:meth:`_trim`): the logits then cover the
        nodes within one hop, the seeds first."""
        return self._run(x, edge_index, hops, len(self.layers))

    @property
    def first_layer(self) -> nn.Module:
        return self.layers[0]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise UserError(f"model.{name} must be ≥ 1 (got {v})")
