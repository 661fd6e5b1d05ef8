"""From config to objects: the data module, the model, loggers and callbacks.

This is where a constructor's complaint about its own arguments (``ValueError``,
``TypeError``) becomes a :class:`~gnn_attn.errors.UserError` in config words, once for
every group: ``heads must be an integer ≥ 1 (got 0)`` raised by the backbone becomes
``model.heads must be an integer ≥ 1 (got 0)``.
"""

from __future__ import annotations

import importlib
import re
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from gnn_attn.callbacks import EarlyStoppingCheckpoint
from gnn_attn.callbacks.selection import PeriodicCheckpoint
from gnn_attn.callbacks.signals import StopOnSignal
from gnn_attn.data import GraphSetDataModule, NodeDataModule
from gnn_attn.errors import UserError, user_error_in
from gnn_attn.loggers import is_offline
from gnn_attn.models import ModelSettings, NodeClassifier
from gnn_attn.run.distributed import world_size
from gnn_attn.run.sweep import is_multirun
from gnn_attn.typecheck import check_call

SETTINGS = tuple(f.name for f in fields(ModelSettings))


def config_error(key: str, node: Any, err: BaseException) -> UserError:
    """``err``, raised by the constructor of config node ``key``, in config words."""
    text = " ".join(str(err).split())
    keys = set(node) if isinstance(node, (dict, DictConfig)) else set()
    target = node.get("_target_", "?") if isinstance(node, (dict, DictConfig)) else "?"
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", text)
    if unexpected:
        return UserError(
            f"{key}.{unexpected.group(1)} is not an argument of {target}; remove it from "
            f"the {key} config or rename it"
        )
    missing = re.search(
        r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", text
    )
    if missing:
        return UserError(f"{target} needs {missing.group(1)}; add it to the {key} config")
    first = re.match(r"[\w.]+", text)
    if first and first.group(0).split(".")[0] in keys:
        return UserError(f"{key}.{text}")
    return UserError(f"{key} ({target}): {text}")


def build_node(key: str, node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``, with the constructor's argument errors (and an
    unimportable ``_target_``) as one :class:`UserError` naming ``key``. Every value is
    first checked against the type the constructor declares (:mod:`gnn_attn.typecheck`)."""
    check_call(key, node)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err.__context__
        user = user_error_in(err)
        if user is not None:
            raise user from err
        if isinstance(cause, (ValueError, TypeError)):
            raise config_error(key, node, cause) from err
        if "Error locating target" in str(err):
            target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else node
            reason = " ".join(str(cause).split())
            raise UserError(
                f"{key}._target_ '{target}' cannot be imported ({reason}); give an importable "
                "path (package.module.Class) and check the module is on PYTHONPATH"
            ) from err
        raise


def model_settings(model: dict[str, Any]) -> ModelSettings:
    """The template's keys of a model config, typed by :class:`ModelSettings`."""
    mine = {k: model[k] for k in SETTINGS if k in model}
    if "name" not in mine:  # a model config without a name: its class's
        mine["name"] = str(model.get("_target_", "model")).rsplit(".", 1)[-1].lower()
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelSettings), mine)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        msg = " ".join(str(getattr(err, "msg", err)).split())
        msg = re.sub(r"\s*full_key:.*$", "", msg)  # OmegaConf's own location suffix
        raise UserError(f"model.{key}: {msg}") from err


def backbone_class(cfg: DictConfig) -> Any:
    """What ``model._target_`` names (a class or a factory)."""
    target = str(cfg.model.get("_target_"))
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(
            f"model._target_ '{target}' cannot be imported ({type(err).__name__}: {err}); "
            "give an importable path (package.module.Class) on PYTHONPATH"
        ) from err


def build_data(cfg: DictConfig, stage: str, sweep: bool = False) -> NodeDataModule:
    """The data module of ``cfg.data``, set up for ``stage``. The features stay CSR only
    for backbones (``model._target_``) that declare ``supports_csr``. In a sweep
    (``sweep``, or Hydra's multirun) it prints no report."""
    net_class = backbone_class(cfg)
    data_kwargs = {}
    data_class = get_class(cfg.data._target_) if "_target_" in cfg.data else None
    takes_csr = getattr(net_class, "supports_csr", False)
    if not takes_csr and isinstance(data_class, type) and issubclass(data_class, NodeDataModule):
        data_kwargs["sparse_features"] = False
    if (sweep or is_multirun()) and "verbose" in cfg.data:  # a sweep job: one result line
        data_kwargs["verbose"] = False
    datamodule: NodeDataModule = build_node("data", cfg.data, **data_kwargs)
    try:
        datamodule.setup(stage)
    except (ValueError, TypeError) as err:  # e.g. a split rule the dataset cannot take
        raise config_error("data", cfg.data, err) from err
    return datamodule


def build_model(
    cfg: DictConfig, datamodule: NodeDataModule, run_config: dict[str, Any] | None = None
) -> NodeClassifier:
    """The classifier sized to ``datamodule``'s graph. The random generators are seeded
    with ``cfg.seed`` just before, so a model's initial weights depend on its config and
    seed alone (not on what the data module drew): a stacked member and the lone run of
    its seed start from the same weights."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    settings = model_settings(model)
    backbone = {k: v for k, v in model.items() if k not in SETTINGS}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net = build_node(
        "model", backbone, in_channels=datamodule.num_features, out_channels=datamodule.num_classes
    )
    try:
        module = NodeClassifier(
            net,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            weight_decay_on=settings.weight_decay_on,
            optimizer=settings.optimizer,
            run_config=run_config,
        )
    except (ValueError, TypeError, ImportError) as err:
        raise config_error("model", model, err) from err
    _check_fanouts(cfg, net)
    return module


def build_data_and_model(
    cfg: DictConfig, stage: str, run_config: dict[str, Any] | None = None
) -> tuple[NodeDataModule, NodeClassifier]:
    """The data module (set up for ``stage``) and the classifier sized to its graph; the
    data module serves receptive fields to backbones whose outputs are exact on them
    (``exact_hops``)."""
    datamodule = build_data(cfg, stage)
    module = build_model(cfg, datamodule, run_config)
    if datamodule.loader == "full":
        datamodule.serve_receptive_fields(getattr(module.net, "exact_hops", None))
    return datamodule, module


def is_graph_set(cfg: DictConfig) -> bool:
    """Whether ``cfg.data`` is a data module of many graphs (batches of graphs)."""
    try:
        data_class = get_class(str(cfg.data.get("_target_")))
    except Exception:  # not importable: building the data names the problem
        return False
    return isinstance(data_class, type) and issubclass(data_class, GraphSetDataModule)


def check_ddp_loader(cfg: DictConfig) -> None:
    """Full-batch DDP on one graph is refused before any rank starts (batches of graphs
    are shared out between the ranks by Lightning's distributed sampler)."""
    one_graph = cfg.data.get("loader", "full") == "full" and not is_graph_set(cfg)
    if world_size(cfg) > 1 and one_graph:
        raise UserError(
            f"trainer={cfg.trainer.get('strategy')} with {world_size(cfg)} processes needs "
            "mini-batches: full-batch DDP gives no speed-up (every rank would process the "
            "whole graph); add data.loader=neighbor or use trainer=cpu"
        )


def _check_fanouts(cfg: DictConfig, net: torch.nn.Module) -> None:
    hops = getattr(net, "receptive_hops", None)
    if cfg.data.get("loader") != "neighbor" or not hops:
        return
    fanouts = list(cfg.data.num_neighbors)
    if len(fanouts) != hops:
        raise UserError(
            f"data.num_neighbors has {len(fanouts)} entries but the model has {hops} layers; "
            f"give one fan-out per layer, e.g. data.num_neighbors=[{','.join(['10'] * hops)}]"
        )


def _hydra_job() -> tuple[str | None, str | None, list[str]]:
    """(run name from the overrides, sweep dir when multirun, the model and data
    choices) — (None, None, []) outside Hydra."""
    if not HydraConfig.initialized():
        return None, None, []
    hc = HydraConfig.get()
    name = hc.job.override_dirname or hc.job.name
    choices = [str(hc.runtime.choices.get(k)) for k in ("model", "data")]
    return name, (hc.sweep.dir if is_multirun() else None), [c for c in choices if c != "None"]


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The configured loggers. W&B is started here, named after the overrides, grouped
    by sweep, ``job_type`` = the task (train/eval), tagged with the model and dataset; if
    it fails for any reason, one warning, and the run goes on with the CSV logger."""
    name, group, tags = _hydra_job()
    loggers: list[Logger] = []
    for key, lg_cfg in (cfg.get("logger") or {}).items():
        if key != "wandb":
            loggers.append(build_node(f"logger.{key}", lg_cfg))
            continue
        with open_dict(lg_cfg):
            lg_cfg.name = lg_cfg.name or name
            lg_cfg.group = lg_cfg.group or group
            lg_cfg.job_type = lg_cfg.get("job_type") or cfg.get("task_name")
            lg_cfg.tags = list(dict.fromkeys([*(lg_cfg.get("tags") or []), *tags]))
        try:
            wandb_logger = instantiate(lg_cfg)
            run = wandb_logger.experiment  # starts the run now, not mid-training
            loggers.append(wandb_logger)
            if is_offline(run):
                print(f"W&B offline: upload later with `wandb sync {Path(run.dir).parent}`")
            elif getattr(run, "url", None):
                print(f"W&B online: {run.url}")
        except Exception as err:
            warnings.warn(
                f"W&B could not start ({type(err).__name__}: {err}); logging to "
                f"CSV in {cfg.paths.output_dir}/csv instead",
                stacklevel=2,
            )
            if not any(isinstance(lg, CSVLogger) for lg in loggers):
                loggers.append(CSVLogger(cfg.paths.output_dir, name="csv", version=""))
    return loggers


def configured_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks of ``cfg.callbacks`` (pictures, summaries), built."""
    return [build_node(f"callbacks.{k}", c) for k, c in (cfg.get("callbacks") or {}).items()]


def build_callbacks(
    cfg: DictConfig,
) -> tuple[EarlyStoppingCheckpoint, PeriodicCheckpoint, StopOnSignal, Timer, list[L.Callback]]:
    """The selection rule, when its checkpoints are written, the signal handler, the fit
    timer and the configured callbacks (pictures, progress bar), all in the list given
    to the Trainer."""
    selection = build_node("early_stopping", cfg.early_stopping)
    periodic = build_node("checkpoint", cfg.checkpoint, selection=selection)
    stop, timer = StopOnSignal(), Timer(duration=None, verbose=False)
    callbacks: list[L.Callback] = [selection, periodic, stop, timer, *configured_callbacks(cfg)]
    # a sweep job prints one start and one result line: no progress
    if (
        cfg.trainer.get("enable_progress_bar", True)
        and cfg.get("progress_bar")
        and not is_multirun()
    ):
        progress = build_node("progress_bar", cfg.progress_bar)
        if progress is not None:
            callbacks.append(progress)
    return selection, periodic, stop, timer, callbacks


def read_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """A checkpoint written by gnn-attn's train.py (it stores the resolved training
    config in ``hyper_parameters.run_config``), loaded on the CPU; a missing, unreadable
    or foreign file is one :class:`UserError` naming it."""
    if not ckpt_path.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt_path}; pass ckpt_path=<run dir>/checkpoints/best.ckpt"
        )
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint {ckpt_path} ({type(err).__name__}); it is truncated or "
            "not a PyTorch file: pass a best.ckpt/last.ckpt written by train.py"
        ) from err
    stored = (
        (ckpt.get("hyper_parameters") or {}).get("run_config") if isinstance(ckpt, dict) else None
    )
    if not stored:
        raise UserError(
            f"{ckpt_path} was not written by gnn-attn's train.py (no stored config); pass a "
            "checkpoint from <run dir>/checkpoints/"
        )
    return ckpt


def load_run_config(ckpt_path: Path) -> DictConfig:
    """The resolved training config stored in a gnn-attn checkpoint."""
    return OmegaConf.create(read_checkpoint(ckpt_path)["hyper_parameters"]["run_config"])
