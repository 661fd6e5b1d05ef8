from gnn_attn.data.base import NodeDataModule, graph_stats, node_degree
from gnn_attn.data.planetoid import PlanetoidDataModule
from gnn_attn.data.pyg import PyGDataModule
from gnn_attn.data.synthetic import SyntheticDataModule, make_sbm

__all__ = [
    "NodeDataModule",
    "PlanetoidDataModule",
    "PyGDataModule",
    "SyntheticDataModule",
    "graph_stats",
    "make_sbm",
    "node_degree",
]
