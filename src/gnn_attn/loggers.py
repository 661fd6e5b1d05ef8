"""Logger factories that need more than a ``_target_``: W&B offline-by-default."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_has_credentials() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or in ``~/.netrc`` for W&B's host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    return any(h in base for h in hosts)


def wandb_mode(mode: str = "auto") -> str:
    """``online``/``offline``/``disabled``; ``auto`` = ``$WANDB_MODE`` if set, else online
    with credentials and offline without (never a login prompt)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if wandb_has_credentials() else "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A Lightning :class:`WandbLogger` that writes under the run's output dir and never
    prompts. Offline runs land in ``<save_dir>/wandb/offline-run-*``; upload them later
    with ``wandb sync <that dir>``."""
    import wandb

    resolved = wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        tags=list(tags or []),
        entity=entity,
        offline=resolved == "offline",
        mode=resolved,
        settings=wandb.Settings(silent=True, console="off"),
        **kwargs,
    )
