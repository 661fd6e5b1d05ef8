"""What a run prints: a short header, and silence for messages that do not apply."""

from __future__ import annotations

import logging
import warnings

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# Lightning messages that never apply to graph training as done here.
_IGNORED_WARNINGS = (
    r".*does not have many workers.*",
    r".*smaller than the logging interval.*",
    r".*The number of training batches.*",
    r".*Trying to infer the `batch_size`.*",
    r".*GPU available but not used.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*LeafSpec.*",
    r".*Sparse CSR tensor support is in beta.*",
    r".*Sparse invariant checks are implicitly disabled.*",
    r".*callbacks used to create the checkpoint need to be provided.*",
    # DDP: the module sums its epoch metrics over ranks itself before logging them
    r".*when logging on epoch level in distributed setting.*",
)
# Libraries that announce their start-up on the console (plugin discovery, migrations).
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "alembic", "stevedore")


def quiet() -> None:
    """Silence Lightning's tips and banners, start-up chatter of other libraries, and
    warnings that do not apply here."""
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def header(cfg: DictConfig, out_dir: str) -> list[str]:
    """The run's header: what trains on what, the chosen groups, and the command-line
    overrides (what differs from the defaults). The whole resolved config is written to
    ``<run dir>/config.yaml``."""
    choices, overrides = {}, []
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
        overrides = list(hc.overrides.task)
    data = cfg.data.get("name") or choices.get("data", "?")
    groups = " ".join(
        f"{g}={choices[g]}" for g in ("trainer", "logger", "callbacks") if g in choices
    )
    lines = [f"{cfg.model.get('name', choices.get('model', '?'))} on {data} | seed {cfg.seed}"]
    lines[0] += f" | {groups}" if groups else ""
    lines[0] += f" | {out_dir}"
    if overrides:
        lines.append("overrides: " + " ".join(overrides))
    return lines


def ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``0–2, 5``."""
    out, start, prev = [], None, None
    for v in [*sorted(values), None]:
        if start is not None and (v is None or v != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(out)
