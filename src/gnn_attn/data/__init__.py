from gnn_attn.data.base import NodeDataModule, graph_stats, node_degree
from gnn_attn.data.dictionary_lookup import DictionaryLookupDataModule, lookup_graph
from gnn_attn.data.graph_set import GraphSetDataModule
from gnn_attn.data.planetoid import PlanetoidDataModule
from gnn_attn.data.pyg import PyGDataModule
from gnn_attn.data.synthetic import SyntheticDataModule, make_sbm

__all__ = [
    "DictionaryLookupDataModule",
    "GraphSetDataModule",
    "NodeDataModule",
    "PlanetoidDataModule",
    "PyGDataModule",
    "SyntheticDataModule",
    "graph_stats",
    "lookup_graph",
    "make_sbm",
    "node_degree",
]
