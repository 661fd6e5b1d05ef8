"""The config's schema and resolvers, registered when :mod:`gnn_attn` is imported.

``TrainSchema`` types the top level of ``conf/train.yaml`` (Hydra checks it when the
config composes: ``seed=abc`` fails there). The groups (``data``, ``model``, ...) and
``early_stopping``, ``checkpoint`` are constructor calls (``_target_`` plus arguments),
checked against their constructors' own annotations (:mod:`gnn_attn.typecheck`). Values
live in the YAML files; this module holds types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class TrainSchema:
    """Types of ``conf/train.yaml``'s own keys (values and comments are in that file)."""

    task_name: str = MISSING
    seed: int = MISSING
    print_config: bool = MISSING
    ckpt_path: str | None = None
    threads: int | None = None
    optimized_metric: str = MISSING
    data: Any = MISSING
    model: Any = MISSING
    trainer: Any = MISSING
    logger: Any = field(default_factory=dict)
    callbacks: Any = field(default_factory=dict)
    paths: Any = MISSING
    early_stopping: Any = MISSING
    checkpoint: Any = MISSING
    progress_bar: Any = None


@dataclass
class EvalSchema:
    """Types of ``conf/eval.yaml``'s own keys."""

    task_name: str = MISSING
    ckpt_path: str = MISSING
    print_config: bool = False
    trainer: Any = MISSING
    paths: Any = MISSING


def project_root() -> str:
    """The checkout holding ``conf/`` (an editable install), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "conf").is_dir() else Path.cwd())


def conf_dir() -> Path:
    return Path(project_root()) / "conf"


def paper_datasets(data_dir: str) -> str:
    """``cora,citeseer``, plus ``pubmed`` when its raw files are in ``data_dir``."""
    pubmed = Path(data_dir) / "PubMed" / "raw" / "ind.pubmed.graph"
    return "cora,citeseer,pubmed" if pubmed.is_file() else "cora,citeseer"


def gat_name(version: str) -> str:
    """``gat`` for attention version v1, ``gatv2`` for v2 (the model's name in results)."""
    return "gat" if str(version) == "v1" else f"gat{version}"


def per_head(width: int, heads: int) -> int:
    """Features per head that give a layer of ``width`` concatenated features."""
    if heads < 1 or width % heads:
        raise ValueError(
            f"a width of {width} does not split into {heads} heads (model.heads); "
            "pick heads dividing it or set model.hidden_channels"
        )
    return width // heads


def optuna_storage(sweep_dir: str) -> str:
    """``sqlite:///<sweep_dir>/optuna.db`` for ``hparams_search``, the folder made now
    (Optuna creates the study before the first job makes the sweep dir). A later search
    given ``hydra.sweeper.storage=<that URL>`` continues the study (the sweeper loads a
    study that exists) in its own sweep dir."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(sweep_dir).resolve()}/optuna.db"


def model_configs() -> dict[str, DictConfig]:
    """Every option of the ``model`` group (the files of ``conf/model/`` and of any
    search path added with ``hydra.searchpath``), composed, in their ``order``."""
    if GlobalHydra.instance().is_initialized():
        return _compose_models()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return _compose_models()


def _compose_models() -> dict[str, DictConfig]:
    loader = GlobalHydra.instance().config_loader()
    names = loader.get_group_options("model")
    models = {n: compose("train", overrides=[f"model={n}"]).model for n in names}
    return dict(sorted(models.items(), key=lambda kv: (kv[1].get("order", 100), kv[0])))


def paper_models() -> str:
    """The models whose config says ``paper_table: true``, comma-separated, in order."""
    return ",".join(n for n, m in model_configs().items() if m.get("paper_table", False))


def register() -> None:
    """Register the schemas (ConfigStore) and the resolvers (OmegaConf); idempotent."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="eval_schema", node=EvalSchema)
    for name, fn in (
        ("project_root", project_root),
        ("paper_datasets", paper_datasets),
        ("gat_name", gat_name),
        ("paper_models", paper_models),
        ("optuna_storage", optuna_storage),
        ("per_head", per_head),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
