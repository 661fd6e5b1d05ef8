"""Train one model (or a sweep with -m): python train.py model=gatv2 data=cora"""

from gnn_attn.run import entry
from gnn_attn.run.train import train

if __name__ == "__main__":
    entry.main(train, config_name="train")
