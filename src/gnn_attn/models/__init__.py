from gnn_attn.models.gat import GAT
from gnn_attn.models.gcn import GCN
from gnn_attn.models.mlp import MLP
from gnn_attn.models.module import NodeClassifier
from gnn_attn.models.stack import LayerStack, count_parameters

__all__ = ["GAT", "GCN", "MLP", "LayerStack", "NodeClassifier", "count_parameters"]
