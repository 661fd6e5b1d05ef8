"""Logger factories that need more than a ``_target_``: W&B offline-by-default."""

from __future__ import annotations

import netrc
import os
import secrets
import string
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


def new_run_id() -> str:
    """A fresh W&B run id (8 characters from ``[a-z0-9]``, as W&B makes them)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def is_offline(run: Any) -> bool:
    """Whether a started W&B run writes locally (W&B names that mode ``offline`` or, in
    some code paths, ``dryrun``)."""
    return run.settings.mode in ("offline", "dryrun")


class RunLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` with what a gnn-attn run adds: the selected
    checkpoint as a model artifact (``log_model``; Lightning's own ``log_model`` follows
    a ``ModelCheckpoint``, which the selection rule is not), and no ``anonymous``
    argument to ``wandb.init`` (Lightning 2.6 passes ``anonymous=None``, which W&B ≥ 0.22
    warns about on every run)."""

    def __init__(self, *, log_model: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)
        self.log_best_checkpoint = log_model

    def log_checkpoint(self, path: str, metadata: dict[str, Any]) -> str | None:
        """Log ``path`` as the artifact ``model-<run id>`` (type ``model``, alias
        ``best``) when ``log_model`` is on; returns the artifact's name."""
        if not self.log_best_checkpoint:
            return None
        import wandb

        name = f"model-{self.experiment.id}"
        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_file(path, name="best.ckpt")
        self.experiment.log_artifact(artifact, aliases=["best"])
        self.experiment.summary["model_artifact"] = name
        return name


def wandb_logger(
    project: str,
    save_dir: str,
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    log_model: bool = False,
    **kwargs: Any,
) -> RunLogger:
    """A :class:`RunLogger` that writes under the run's output dir and never prompts.
    Offline runs land in ``<save_dir>/wandb/offline-run-*``; upload them later with
    ``wandb sync <that dir>``. ``group`` gathers a sweep's runs, ``job_type`` is
    ``train``/``eval``, ``tags`` e.g. the model and dataset; ``log_model`` logs the
    selected ``best.ckpt`` as a model artifact."""
    import wandb

    resolved = wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    return RunLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        job_type=job_type,
        tags=list(tags or []),
        entity=entity,
        offline=resolved == "offline",
        mode=resolved,
        settings=wandb.Settings(silent=True, console="off"),
        log_model=log_model,
        **kwargs,
    )


def log_sweep_summary(
    project: str,
    sweep_dir: str,
    table: tuple[list[str], list[list[Any]]],
    images: dict[str, Path],
    mode: str = "auto",
    entity: str | None = None,
) -> Path | None:
    """A W&B run of ``job_type="sweep-summary"`` in the sweep's group (``sweep_dir``, as
    its jobs' runs): the aggregated table as ``results`` and the plots as images. Returns
    the offline run's dir (to ``wandb sync``), None when online."""
    import wandb

    run = wandb.init(
        project=project,
        entity=entity,
        group=sweep_dir,
        job_type="sweep-summary",
        name=f"summary {Path(sweep_dir).name}",
        dir=sweep_dir,
        mode=wandb_mode(mode),
        settings=wandb.Settings(silent=True, console="off"),
    )
    columns, rows = table
    run.log(
        {
            "results": wandb.Table(columns=columns, data=rows),
            **{key: wandb.Image(str(path)) for key, path in images.items() if path.is_file()},
        }
    )
    offline = is_offline(run)
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir if offline else None
