"""Evaluate a checkpoint: python eval.py ckpt_path=outputs/<run>/checkpoints/best.ckpt"""

import hydra
from omegaconf import DictConfig

import gnn_attn.evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    gnn_attn.evaluate.main(cfg)


if __name__ == "__main__":
    main()
