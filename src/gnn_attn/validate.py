"""Check a composed config before any work starts: one clear error per problem."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gnn_attn.errors import UserError

GROUPS = ("data", "model", "trainer", "logger", "callbacks", "experiment", "hparams_search")


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` for the first impossible setting in ``cfg``."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise UserError(f"seed must be an integer (got {cfg.seed!r})")
    m = cfg.model
    for key in ("hidden", "layers", "out_heads"):
        if key in m:
            _at_least(f"model.{key}", m[key], 1)
    if "heads" in m:
        for h in m.heads if _is_list(m.heads) else [m.heads]:
            _at_least("model.heads", h, 1)
    for key in ("dropout", "attn_dropout", "feat_dropout"):
        if key in m and not (isinstance(m[key], (int, float)) and 0 <= m[key] < 1):
            raise UserError(f"model.{key} must be in [0, 1) (got {m[key]})")
    for key in ("dropout_per_head", "residual"):
        if key in m and not isinstance(m[key], bool):
            raise UserError(f"model.{key} must be true or false (got {m[key]!r})")
    if not (isinstance(m.lr, (int, float)) and m.lr > 0):
        raise UserError(f"model.lr must be > 0 (got {m.lr})")
    if not (isinstance(m.weight_decay, (int, float)) and m.weight_decay >= 0):
        raise UserError(f"model.weight_decay must be ≥ 0 (got {m.weight_decay})")
    _at_least("trainer.max_epochs", cfg.trainer.max_epochs, 1)
    _at_least("early_stopping.patience", cfg.early_stopping.patience, 0)
    if cfg.get("threads") is not None:
        _at_least("threads", cfg.threads, 1)
    _check_loader(cfg)
    _check_writable(Path(cfg.paths.output_dir))


def _check_loader(cfg: DictConfig) -> None:
    from gnn_attn.distributed import world_size

    d = cfg.data
    loader = d.get("loader", "full")
    if world_size(cfg) > 1 and loader == "full":
        raise UserError(
            f"trainer={cfg.trainer.get('strategy')} with {world_size(cfg)} processes needs "
            "mini-batches: full-batch DDP gives no speed-up (every rank would process the "
            "whole graph); add data.loader=neighbor or use trainer=cpu"
        )
    if loader != "neighbor":
        return
    hops = list(d.num_neighbors)
    layers = cfg.model.get("layers")
    if cfg.model.name != "mlp" and layers is not None and len(hops) != layers:
        raise UserError(
            f"data.num_neighbors has {len(hops)} entries but model.layers={layers}; give one "
            f"fan-out per layer, e.g. data.num_neighbors=[{','.join(['10'] * layers)}]"
        )


def _is_list(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer (got {value!r})")
    if value < low:
        raise UserError(f"{name} must be ≥ {low} (got {value})")


def _check_writable(path: Path) -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UserError(
            f"cannot write the output dir {path}; choose another with "
            "hydra.run.dir=<dir> (or paths.log_dir=<dir>)"
        )


def _model_keys(conf_dir: Path, choice: str) -> set[str]:
    """Top-level keys of ``conf/model/<choice>.yaml`` and the model files it extends."""
    import yaml

    path = conf_dir / "model" / f"{choice}.yaml"
    if not path.is_file():
        return set()
    node = yaml.safe_load(path.read_text()) or {}
    keys = {k for k in node if k != "defaults"}
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            keys |= _model_keys(conf_dir, parent)
    return keys


def check_choices(argv: list[str], conf_dir: Path) -> None:
    """Before Hydra composes: every ``group=choice`` on the command line (sweep lists
    included) must name a file ``conf/<group>/<choice>.yaml``. Prints one ``Error:`` line
    and exits 2 otherwise (Hydra's own message is several lines and exits 1)."""
    models = ["gatv2"]
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key.lstrip("+~") == "model" and sep:
            models = value.split(",")
    if any(a.startswith(("experiment=", "hparams_search=")) for a in argv):
        models = []  # those configs pick the model themselves
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if key.startswith("model.") and sep and not arg.startswith("+"):
            name = key.split(".")[1]
            for m in models:
                allowed = _model_keys(conf_dir, m)
                if allowed and name not in allowed:
                    _fail(
                        f"model.{name} does not apply to model={m} (it has "
                        f"{', '.join(sorted(k for k in allowed if k != 'module'))}); "
                        f"drop it or pick a model that has it"
                    )
        if not sep or key not in GROUPS:
            continue
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice not in (*options, "null") and "(" not in choice:
                _fail(
                    f"unknown {key} '{choice}'; choose one of {', '.join(options)} "
                    f"({key}={options[0]})"
                )


def check_composes(argv: list[str], conf_dir: Path) -> None:
    """Compose the config with Hydra's compose API before Hydra runs, so that a misspelt
    key (``trainer.max_epoch=5``) or a bad value type is one ``Error:`` line with exit 2
    instead of Hydra's multi-line report. A sweep (``-m``) is checked on its first job
    (the first value of every list or range); interval sweeps, globs and ``hydra.*``
    overrides are left to Hydra, as are runs with other flags (``--cfg``, ...)."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        overrides = _first_job([a for a in argv if not a.startswith("-")])
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        text = " ".join(str(err).split())
        _fail(f"{text[:300]}; check the spelling (python train.py --cfg job lists the keys)")


def _first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job: each list/range sweep replaced by its first
    value; ``hydra`` overrides and sweeps that cannot be enumerated here dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    first: list[str] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_hydra_override():
            continue
        if not o.is_sweep_override():
            first.append(o.input_line)
            continue
        if not o.is_discrete_sweep():
            continue
        try:
            value = next(iter(o.sweep_string_iterator()), None)
        except HydraException:  # a glob needs Hydra's config loader
            continue
        if value is not None:
            first.append(f"{o.get_key_element()}={value}")
    return first


def _fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(2)
