"""Generated datasets on disk: one file per setting, named by a hash of the setting,
written atomically (readers never see a half-written file)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from gnn_attn.errors import UserError


def cache_path(cache_dir: str | Path, stem: str, params: dict[str, Any], fmt: int) -> Path:
    """``<cache_dir>/<stem>-<hash>.pt``, the hash covering ``params`` and the
    generator's format version ``fmt`` (bumped when the generator changes)."""
    text = json.dumps({**params, "format": fmt}, sort_keys=True)
    return Path(cache_dir) / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.pt"


def write_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(tensors, tmp)
    os.replace(tmp, path)


def read_cache(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a cache file; an unreadable one is one :class:`UserError`."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        raise UserError(
            f"could not read the cached dataset {path} ({type(err).__name__}); "
            "delete it and run again to regenerate it"
        ) from err
