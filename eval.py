"""Evaluate a checkpoint: python eval.py ckpt_path=outputs/<run>/checkpoints/best.ckpt"""

import signal

from train import interrupted_while_starting  # stdlib only: installed before any import

if __name__ == "__main__":
    signal.signal(signal.SIGINT, interrupted_while_starting)
    signal.signal(signal.SIGTERM, interrupted_while_starting)
    from gnn_attn.run import entry
    from gnn_attn.run.evaluate import evaluate

    entry.main(evaluate, config_name="eval")
