"""The type check of config values against their constructors' annotations
(:mod:`gnn_attn.typecheck`), case by case; the CLI's lines are in test_hardening."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gnn_attn.errors import UserError
from gnn_attn.typecheck import check_config, check_node, mismatch, parameter_types, type_name
from tests.conftest import CONF


@pytest.mark.parametrize(
    ("annotation", "value", "ok"),
    [
        (int, 5, True),
        (int, "5", False),  # a word where a number is wanted, even one that reads as one
        (int, True, False),  # a boolean is not a number
        (float, 5, True),  # an int is a float
        (bool, "maybe", False),
        (bool, "yes", False),  # pydantic would read it as True; the constructor would not
        (int | None, None, True),
        (list[int], [10, 10], True),
        (list[int], ["10", "10"], False),  # at any depth
        (tuple[int, ...], [1, 2], True),  # a list is a tuple
        (Path, "/tmp/x", True),  # a str is a Path
        (str, 2024, True),  # Hydra reads name=2024 as a number: a str is meant
        (list[str], [2024, "b"], True),
        (Literal["16-mixed", 32], "16-mixed", True),
        (Literal["16-mixed", 32], "bogus", False),
        (object, object(), True),  # arbitrary classes: isinstance
    ],
)
def test_values_against_annotations(annotation, value, ok: bool) -> None:
    assert (mismatch(annotation, value) is None) == ok


def test_parameters_follow_kwargs_to_the_base_class() -> None:
    """PlanetoidDataModule passes **kwargs on: NodeDataModule's arguments are its too."""
    declared = parameter_types("gnn_attn.data.PlanetoidDataModule")
    assert {"name", "normalize_features", "loader", "batch_size", "verbose"} <= set(declared)
    assert type_name(declared["eval_num_neighbors"]) == "Sequence[int] | None"
    assert "self" not in declared
    trainer = parameter_types("lightning.pytorch.Trainer")
    assert type_name(trainer["max_epochs"]) == "int | None"


def test_every_shipped_config_passes(tmp_path: Path) -> None:
    """Each choice of each group, composed, is accepted: no default is refused."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in (
            [],
            ["model=gat", "data=cora", "logger=wandb", "callbacks=default"],
            ["model=gcn", "data=synthetic", "trainer=ddp_cpu", "data.loader=neighbor"],
            ["model=mlp", "data=karate", "logger=tensorboard", "callbacks=model_summary"],
            ["data=dictionary_lookup", "model=gatv2", "trainer=gpu"],
            [
                "+trainer.plugins=[{_target_: lightning.fabric.plugins.environments."
                "LightningEnvironment}]"
            ],
        ):
            cfg = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
            check_config(cfg)


def test_a_wrong_value_names_the_key_the_type_and_the_constructor() -> None:
    node = OmegaConf.create({"_target_": "lightning.pytorch.Trainer", "max_epochs": "abc"})
    with pytest.raises(UserError) as err:
        check_node("trainer", node)
    assert str(err.value).startswith(
        "trainer.max_epochs=abc: expected int | None (an argument of lightning.pytorch.Trainer)"
    )
    # a key the template keeps for itself is not checked against the constructor
    check_node("model", {"_target_": "gnn_attn.models.GCN", "dropout": 0.5, "name": 3}, ("name",))
