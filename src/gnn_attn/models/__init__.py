"""Backbones (any ``nn.Module`` with ``forward(x, edge_index)``), the fused attention
layers, and the LightningModule that trains a backbone to classify nodes."""

from gnn_attn.models.gat import GAT
from gnn_attn.models.gcn import GCN
from gnn_attn.models.mlp import MLP
from gnn_attn.models.module import ModelSettings, NodeClassifier, count_parameters
from gnn_attn.models.stack import LayerStack, Readout

__all__ = [
    "GAT",
    "GCN",
    "MLP",
    "LayerStack",
    "ModelSettings",
    "NodeClassifier",
    "Readout",
    "count_parameters",
]
