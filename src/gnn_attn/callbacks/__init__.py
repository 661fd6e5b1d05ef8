from gnn_attn.callbacks.attention import AttentionAnalysis
from gnn_attn.callbacks.confusion import ConfusionMatrix
from gnn_attn.callbacks.dataset_report import DatasetReport
from gnn_attn.callbacks.degree_accuracy import DegreeAccuracy
from gnn_attn.callbacks.predictions import NodePredictions
from gnn_attn.callbacks.selection import EarlyStoppingCheckpoint
from gnn_attn.callbacks.tsne import TSNEPlot

__all__ = [
    "AttentionAnalysis",
    "ConfusionMatrix",
    "DatasetReport",
    "DegreeAccuracy",
    "EarlyStoppingCheckpoint",
    "NodePredictions",
    "TSNEPlot",
]
