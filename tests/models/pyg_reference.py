"""Test helpers: the fused layers next to PyG's GATConv/GATv2Conv (same weights, the
gradients under PyG's names)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gnn_attn.models.gat import FUSED
from gnn_attn.models.gat_conv import FusedAttentionConv


def fused_layer(*args: Any, version: str = "v1", **kwargs: Any) -> FusedAttentionConv:
    """``FusedGATConv`` (v1) or ``FusedGATv2Conv`` (v2)."""
    return FUSED[version](*args, **kwargs)


def load_pyg(layer: FusedAttentionConv, state: dict[str, Tensor]) -> None:
    """Load the state dict of PyG's ``GATConv`` (v1) or ``GATv2Conv`` (v2)."""
    ours = {"bias": state["bias"]}
    if layer.projections == 1:
        ours.update(
            weight=state["lin.weight"].t(), att_src=state["att_src"], att_dst=state["att_dst"]
        )
    else:
        ours.update(
            weight=torch.cat([state["lin_l.weight"].t(), state["lin_r.weight"].t()], 1),
            lin_bias=torch.cat([state["lin_l.bias"], state["lin_r.bias"]]),
            att=state["att"],
        )
    layer.load_state_dict(ours)


def pyg_grads(layer: FusedAttentionConv) -> dict[str, Tensor]:
    """The layer's gradients under PyG's parameter names and shapes."""
    hc = layer.heads * layer.out_channels
    g = {"bias": layer.bias.grad}
    if layer.projections == 1:
        g.update(
            {
                "lin.weight": layer.weight.grad.t(),
                "att_src": layer.att_src.grad,
                "att_dst": layer.att_dst.grad,
            }
        )
        return g
    w, b = layer.weight.grad, layer.lin_bias.grad
    g.update(
        {
            "lin_l.weight": w[:, :hc].t(),
            "lin_r.weight": w[:, hc:].t(),
            "lin_l.bias": b[:hc],
            "lin_r.bias": b[hc:],
            "att": layer.att.grad,
        }
    )
    return g
