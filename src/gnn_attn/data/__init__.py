from gnn_attn.data.planetoid import PlanetoidDataModule, graph_stats

__all__ = ["PlanetoidDataModule", "graph_stats"]
