"""Every config group choice composes with Hydra's compose API and builds; the model and
data configs are constructor calls with each setting written once."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.config import model_configs, paper_models
from gnn_attn.data import GraphSetDataModule, NodeDataModule
from gnn_attn.models import NodeClassifier
from gnn_attn.run.build import SETTINGS, build_data_and_model
from tests.conftest import CONF


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}", *overrides],
        )


@pytest.mark.parametrize("data", [d for d in choices("data") if d != "pubmed"])
def test_data_choices_instantiate(tmp_path: Path, data: str) -> None:
    cfg = compose_train(tmp_path, f"data={data}")
    dm = instantiate(cfg.data)
    assert isinstance(dm, (NodeDataModule, GraphSetDataModule))
    assert type(dm) is get_class(cfg.data._target_)
    assert dm.loader == cfg.data.get("loader", "graphs") and dm.seed == cfg.seed
    if "name" in cfg.data:
        assert dm.name.lower() == cfg.data.name


@pytest.mark.parametrize("model", choices("model"))
def test_model_choices_build(tmp_path: Path, model: str, cache_dir: Path) -> None:
    cfg = compose_train(tmp_path, f"model={model}", "data=cora", f"paths.cache_dir={cache_dir}")
    dm, module = build_data_and_model(cfg, "fit")
    assert isinstance(module, NodeClassifier)
    assert type(module.net) is get_class(cfg.model._target_)
    assert module.hparams.lr == cfg.model.lr
    optimizer = module.configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == cfg.model.lr
    assert optimizer.param_groups[0]["weight_decay"] == cfg.model.weight_decay
    # every backbone key of the config reached the backbone's constructor
    backbone_keys = [k for k in cfg.model if k not in SETTINGS and k != "_target_"]
    for key in backbone_keys:
        if hasattr(module.net, key):
            assert getattr(module.net, key) == cfg.model[key], key
    # features stay CSR only for backbones that take them
    assert dm.sparse_features == getattr(type(module.net), "supports_csr", False)


def test_gat_configs_name_their_version(tmp_path: Path) -> None:
    for model, version in (("gat", "v1"), ("gatv2", "v2")):
        cfg = compose_train(tmp_path, f"model={model}")
        assert (cfg.model.name, cfg.model.version) == (model, version)
    swapped = compose_train(tmp_path, "model=gat", "model.version=v2")
    assert swapped.model.name == "gatv2"


def test_each_setting_is_written_once() -> None:
    """No model or data config copies a value of its own node (``${model.…}``)."""
    for group in ("model", "data"):
        for path in (CONF / group).rglob("*.yaml"):
            assert not re.search(r"\$\{" + group + r"\.", path.read_text()), path


def test_printed_config_has_each_model_setting_once(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "model=gat")
    keys = list(cfg.model)
    assert len(keys) == len(set(keys))
    assert "module" not in cfg.model and "module" not in cfg.data


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
    # logger=wandb keeps the CSV log alongside
    assert len(loggers) == {"none": 0, "wandb": 2}.get(logger, 1)
    if logger == "wandb":
        assert any(isinstance(lg, CSVLogger) for lg in loggers)


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
    v2 = compose_train(tmp_path, "data=pubmed", "model=gatv2")
    assert (v2.model.out_heads, v2.model.lr, v2.model.version) == (8, 0.01, "v2")
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
    assert (m.num_layers, m.heads, m.hidden_channels, m.concat, m.out_heads) == (2, 8, 8, True, 1)
    assert (m.dropout, m.attn_dropout, m.lr, m.weight_decay) == (0.6, 0.6, 0.005, 5e-4)
    assert cfg.early_stopping.patience == 100
    gcn = compose_train(tmp_path, "model=gcn").model
    assert (gcn.hidden_channels, gcn.dropout, gcn.lr, gcn.weight_decay) == (16, 0.5, 0.01, 5e-4)


def test_model_list_and_order_come_from_the_configs() -> None:
    cards = model_configs()
    assert sorted(cards) == choices("model")
    orders = [m.get("order", 100) for m in cards.values()]
    assert orders == sorted(orders)
    expected = [n for n, m in cards.items() if m.get("paper_table", False)]
    assert paper_models().split(",") == expected and expected
