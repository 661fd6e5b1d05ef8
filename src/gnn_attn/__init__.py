"""gnn-attn: a Lightning + Hydra template for graph attention networks."""

from gnn_attn.config import register

register()

__version__ = "0.1.0"
