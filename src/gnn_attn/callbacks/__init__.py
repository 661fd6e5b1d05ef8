from gnn_attn.callbacks.selection import EarlyStoppingCheckpoint

__all__ = ["EarlyStoppingCheckpoint"]
