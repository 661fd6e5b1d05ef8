"""Every config group choice composes with Hydra's compose API and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.data import PlanetoidDataModule, SyntheticDataModule
from gnn_attn.models import GAT, GCN, MLP, NodeClassifier
from tests.conftest import CONF


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}", *overrides],
        )


@pytest.mark.parametrize("data", choices("data"))
def test_data_choices_instantiate(tmp_path: Path, data: str) -> None:
    cfg = compose_train(tmp_path, f"data={data}")
    dm = instantiate(cfg.data.module)
    if data == "synthetic":
        assert isinstance(dm, SyntheticDataModule) and dm.loader == "neighbor"
        return
    assert isinstance(dm, PlanetoidDataModule) and dm.loader == "full"
    assert dm.name.lower() == cfg.data.name


@pytest.mark.parametrize("model", choices("model"))
def test_model_choices_instantiate(tmp_path: Path, model: str) -> None:
    cfg = compose_train(tmp_path, f"model={model}")
    module = instantiate(cfg.model.module, in_channels=20, num_classes=3)
    assert isinstance(module, NodeClassifier)
    expected = {"mlp": MLP, "gcn": GCN, "gat": GAT, "gatv2": GAT}[model]
    assert type(module.net) is expected
    assert cfg.model.name == model
    if model.startswith("gat"):
        assert module.net.version == ("v2" if model == "gatv2" else "v1")
    optimizer = module.configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == cfg.model.lr


@pytest.mark.parametrize("trainer", choices("trainer"))
def test_trainer_choices_instantiate(tmp_path: Path, trainer: str) -> None:
    cfg = compose_train(tmp_path, f"trainer={trainer}")
    assert cfg.trainer.max_epochs == 1000
    if cfg.trainer.accelerator == "gpu":  # no GPU here: gpu, ddp
        assert trainer in ("gpu", "ddp")
        return
    assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)


@pytest.mark.parametrize("logger", choices("logger"))
def test_logger_choices_instantiate(tmp_path: Path, logger: str) -> None:
    cfg = compose_train(tmp_path, f"logger={logger}")
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    assert all(isinstance(lg, Logger) for lg in loggers)
    assert len(loggers) == (0 if logger == "none" else 1)


@pytest.mark.parametrize("callbacks", choices("callbacks"))
def test_callback_choices_instantiate(tmp_path: Path, callbacks: str) -> None:
    cfg = compose_train(tmp_path, f"callbacks={callbacks}")
    cbs = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    assert all(isinstance(cb, L.Callback) for cb in cbs)
    assert (len(cbs) == 0) == (callbacks == "none")
    assert isinstance(instantiate(cfg.early_stopping), EarlyStoppingCheckpoint)


def test_pubmed_recipe_applies_to_gat_only(tmp_path: Path) -> None:
    gat = compose_train(tmp_path, "data=pubmed", "model=gat")
    assert (gat.model.out_heads, gat.model.lr, gat.model.weight_decay) == (8, 0.01, 0.001)
    cora = compose_train(tmp_path, "data=cora", "model=gatv2")
    assert (cora.model.out_heads, cora.model.lr, cora.model.weight_decay) == (1, 0.005, 5e-4)
    explicit = compose_train(tmp_path, "data=pubmed", "model=gat", "model.lr=0.02")
    assert explicit.model.lr == 0.02
    gcn = compose_train(tmp_path, "data=pubmed", "model=gcn")
    assert gcn.model.lr == 0.01 and gcn.model.weight_decay == 5e-4


def test_defaults_are_the_papers_recipes(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    assert (cfg.data.name, cfg.model.name) == ("citeseer", "gatv2")
    m = cfg.model
    assert (m.layers, m.heads, m.hidden, m.concat, m.out_heads) == (2, 8, 8, True, 1)
    assert (m.dropout, m.attn_dropout, m.lr, m.weight_decay) == (0.6, 0.6, 0.005, 5e-4)
    assert cfg.early_stopping.patience == 100
    gcn = compose_train(tmp_path, "model=gcn").model
    assert (gcn.hidden, gcn.dropout, gcn.lr, gcn.weight_decay) == (16, 0.5, 0.01, 5e-4)
