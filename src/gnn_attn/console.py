"""What a run prints: the config tree, and silence for messages that do not apply."""

from __future__ import annotations

import logging
import warnings

import rich
import rich.syntax
import rich.tree
from omegaconf import DictConfig, OmegaConf

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


def quiet() -> None:
    """Silence Lightning's tips and banners and warnings that do not apply here."""
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def print_config(cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "trainer")) -> None:
    """Print the resolved config as a tree, one branch per top-level key."""
    tree = rich.tree.Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        branch = tree.add(str(key), style="bold")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text.rstrip() or "{}", "yaml", theme="ansi_dark"))
    rich.print(tree)
