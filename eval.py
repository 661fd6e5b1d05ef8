"""Evaluate a checkpoint: python eval.py ckpt_path=outputs/<run>/checkpoints/best.ckpt"""

from gnn_attn.run import entry
from gnn_attn.run.evaluate import evaluate

if __name__ == "__main__":
    entry.main(evaluate, config_name="eval")
