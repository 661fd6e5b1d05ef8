"""Graph attention networks: GAT (v1, Veličković et al. 2018) and GATv2 (Brody et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from torch_geometric.nn import GATConv, GATv2Conv

from gnn_attn.models.gat_conv import FusedGATConv, FusedGATv2Conv
from gnn_attn.models.sparse import sparse_aware
from gnn_attn.models.stack import (
    LayerStack,
    Readout,
    check_bool,
    check_positive,
    check_probability,
    per_layer,
)

VERSIONS = {"v1": GATConv, "v2": GATv2Conv}  # PyG's layers (impl=pyg)
FUSED = {"v1": FusedGATConv, "v2": FusedGATv2Conv}  # ours (impl=fused)
IMPLS = ("fused", "pyg")
READOUTS = ("attention", "linear")


class GAT(LayerStack):
    r"""A stack of multi-head graph attention layers.

    Each head :math:`k` of a layer computes, over the neighbours :math:`j` of node
    :math:`i` (self-loop included),

    .. math::
        \mathbf{h}'_i = \big\Vert_{k=1}^{K} \text{ or } \tfrac{1}{K}\textstyle\sum_{k=1}^{K}
        \;\sum_{j \in \mathcal{N}(i) \cup \{i\}} \alpha^{k}_{ij}\,\mathbf{W}^{k}\mathbf{h}_j

    with attention coefficients (``version="v1"``, GAT)

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j\big(\mathrm{LeakyReLU}(\mathbf{a}^\top
        [\mathbf{W}\mathbf{h}_i \,\Vert\, \mathbf{W}\mathbf{h}_j])\big)

    or (``version="v2"``, GATv2, "dynamic" attention)

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j\big(\mathbf{a}^\top \mathrm{LeakyReLU}(
        \mathbf{W}[\mathbf{h}_i \,\Vert\, \mathbf{h}_j])\big).

    Hidden layers concatenate (``concat=True``) or average their heads; the output layer
    averages its ``out_heads`` heads (the GAT paper: 1 head on Cora/CiteSeer, 8 on PubMed).
    With ``readout="linear"`` every attention layer is hidden and a per-node linear map
    gives the logits, :math:`\mathbf{h}^{(L)}_i\mathbf{W}_o^\top + \mathbf{b}_o` (Brody et
    al.'s DictionaryLookup model: one attention layer of width 128, ReLU, linear).

    Args:
        in_channels: input features :math:`F_{in}`.
        out_channels: classes :math:`C`.
        hidden_channels: features per head in hidden layers (default 8).
        num_layers: attention layers, output layer included (default 2); with
            ``readout="linear"``, the attention layers before the read-out.
        heads: heads per hidden layer, one int or a list of ``num_layers - 1`` ints
            (``readout="linear"``: ``num_layers`` ints).
        concat: concatenate (true) or average (false) the heads of each hidden layer; one
            bool or a list.
        out_heads: heads of the output layer, always averaged (``readout="attention"``).
        version: ``v1`` (:class:`~torch_geometric.nn.conv.GATConv`) or ``v2``
            (:class:`~torch_geometric.nn.conv.GATv2Conv`).
        dropout: dropout on every layer's input (default 0.6).
        attn_dropout: dropout on the attention coefficients :math:`\alpha` (default 0.6).
        negative_slope: slope of the LeakyReLU (default 0.2).
        activation: non-linearity after hidden layers (default ``elu``).
        residual: see :class:`LayerStack`.
        impl: ``fused`` (:class:`~gnn_attn.models.gat_conv.FusedGATConv` /
            ``FusedGATv2Conv``, the fast layers, equal to PyG's) or ``pyg`` (PyG's
            ``GATConv``/``GATv2Conv`` themselves).
        feat_dropout: dropout on the projected features before aggregation, as in the
            official GAT code (``fused`` only; default 0).
        dropout_per_head: every head draws its own dropout mask of the layer input, as
            in the official GAT code (``fused`` only; default false: one mask shared by
            all heads, as PyG's layers).
        readout: ``attention`` (the last attention layer outputs the classes, as in the
            GAT paper) or ``linear`` (a :class:`~gnn_attn.models.stack.Readout` after the
            attention layers).

    Shapes: ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)` → :math:`(N, C)`;
    with ``return_attention=True`` also, per layer, ``edge_index`` :math:`(2, E + N)`
    (self-loops added) and :math:`\alpha` of shape :math:`(E + N, K)`, for each target
    and head summing to 1 over its incoming edges.
    """

    has_attention = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 8,
        num_layers: int = 2,
        heads: int | Sequence[int] = 8,
        concat: bool | Sequence[bool] = True,
        out_heads: int = 1,
        version: str = "v1",
        dropout: float = 0.6,
        attn_dropout: float = 0.6,
        negative_slope: float = 0.2,
        activation: str = "elu",
        residual: bool = False,
        impl: str = "fused",
        feat_dropout: float = 0.0,
        dropout_per_head: bool = False,
        readout: str = "attention",
    ) -> None:
        super().__init__(dropout, activation, residual)
        if version not in VERSIONS:
            raise ValueError(f"version '{version}' is unknown; choose v1 or v2")
        if impl not in IMPLS:
            raise ValueError(f"impl '{impl}' is unknown; choose fused or pyg")
        check_probability(attn_dropout=attn_dropout, feat_dropout=feat_dropout)
        check_bool(dropout_per_head=dropout_per_head)
        if impl == "pyg" and feat_dropout > 0:
            raise ValueError(
                "feat_dropout needs impl=fused (PyG's layers have no dropout before "
                "aggregation); set feat_dropout=0 or impl=fused"
            )
        if impl == "pyg" and dropout_per_head:
            raise ValueError(
                "dropout_per_head needs impl=fused (PyG's layers take one dropped-out input "
                "for all heads); set dropout_per_head=false or impl=fused"
            )
        check_positive(hidden_channels=hidden_channels, num_layers=num_layers, out_heads=out_heads)
        if readout not in READOUTS:
            raise ValueError(f"readout '{readout}' is unknown; choose attention or linear")
        if readout == "linear" and out_heads != 1:
            raise ValueError(
                "out_heads is for readout=attention (a linear read-out has no heads); "
                "set out_heads=1 or readout=attention"
            )
        if readout == "linear" and residual:
            raise ValueError(
                "residual=true is not built for readout=linear (the read-out would get "
                "a residual path of its own); set residual=false or readout=attention"
            )
        linear = readout == "linear"
        n_hidden = num_layers if linear else num_layers - 1
        heads_l = per_layer(heads, n_hidden, "heads")
        concat_l = per_layer(concat, n_hidden, "concat")
        for h in heads_l:
            check_positive(heads=h)
        self.version, self.impl = version, impl
        self.dims = [in_channels]
        attention_layers = (
            zip(heads_l, concat_l, strict=True)
            if linear
            else zip([*heads_l, out_heads], [*concat_l, False], strict=True)
        )
        for h, c in attention_layers:
            last = len(self.layers) == n_hidden
            d_out = out_channels if last else hidden_channels
            kwargs = dict(heads=h, concat=c, dropout=attn_dropout, negative_slope=negative_slope)
            if impl == "fused":
                own = dropout if dropout_per_head and h > 1 else 0.0  # per-head input masks
                layer = FUSED[version](
                    self.dims[-1],
                    d_out,
                    feat_dropout=feat_dropout,
                    input_dropout=own,
                    **kwargs,
                )
            else:
                layer = VERSIONS[version](self.dims[-1], d_out, **kwargs)
                for name in ("lin", "lin_l", "lin_r"):  # also take CSR features
                    if getattr(layer, name, None) is not None:
                        setattr(layer, name, sparse_aware(getattr(layer, name)))
            self.layers.append(layer)
            self.dims.append(d_out * h if c else d_out)
        if linear:
            self.layers.append(Readout(self.dims[-1], out_channels))
            self.dims.append(out_channels)
        self._finish()

    @property
    def display_name(self) -> str:
        return "GATv2" if self.version == "v2" else "GAT"
