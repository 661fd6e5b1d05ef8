"""Train one model (or a sweep with -m): python train.py model=gatv2 data=cora"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import gnn_attn.train
from gnn_attn.validate import check_choices, check_composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return gnn_attn.train.main(cfg)


if __name__ == "__main__":
    conf = Path(__file__).parent / "conf"
    check_choices(sys.argv[1:], conf)
    check_composes(sys.argv[1:], conf)
    main()
