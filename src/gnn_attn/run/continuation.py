"""Continuing an interrupted sweep: the same command with the same ``hydra.sweep.dir=``
goes on where the sweep stopped.

- The sweep dir records what the sweep is (``sweep.yaml``: its task overrides, its
  config before resolution, an Optuna search space). Another sweep pointed at it is
  refused with one line naming the first difference (:func:`check_sweep_dir`).
- A job is *finished* when its ``metrics.json`` holds a result and its recorded
  overrides are this job's: it is kept untouched (:func:`finished_value`).
- An unfinished job runs again in its own dir: a lone job resumes from its
  ``last.ckpt`` (:func:`resume_in_sweep`), a stack's member from its stack checkpoint
  (:mod:`gnn_attn.run.stacked`), a job with neither starts over; a failed job runs again.

What differs without changing any result may differ between the parts of a sweep: the
settings in :data:`NON_SETTINGS` and every ``hydra.*`` setting but the search space
(the launcher, ``n_jobs``, Optuna's ``n_trials``).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gnn_attn.analysis.jobs import ERROR_FILE
from gnn_attn.config import project_root
from gnn_attn.errors import UserError

RECORD = "sweep.yaml"
# a stack's member's checkpoint in its job's checkpoints/, and the one before it
STACK_CHECKPOINT, STACK_PREVIOUS = "stack.ckpt", "stack.prev.ckpt"
# keys that do not change a job's result: where it writes, how it prints, its threads
NON_SETTINGS = ("paths", "print_config", "threads", "ckpt_path", "trainer.enable_progress_bar")
# overrides the command line gains on its way to Hydra (not the user's)
ADDED = ("hydra/sweeper=stacked",)


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def settings(overrides: list[str]) -> list[str]:
    """``overrides`` without those of :data:`NON_SETTINGS`."""
    return [o for o in overrides if not _is_non_setting(_key_of(o))]


def _is_non_setting(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NON_SETTINGS)


def _without(tree: Any, keys: tuple[str, ...]) -> Any:
    """A plain container of ``tree`` without the dotted ``keys``."""
    out = OmegaConf.to_container(tree, resolve=False) if isinstance(tree, DictConfig) else tree
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def run_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """A job's resolved config without :data:`NON_SETTINGS`: what its result depends on."""
    return _without(copy.deepcopy(run_config), NON_SETTINGS)


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """The first dotted key where two plain containers differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{k}" if path else str(k)
            if k not in new:
                return f"{where} was {old[k]!r}, now unset"
            if k not in old:
                return f"{where} was unset, now {new[k]!r}"
            found = first_difference(old[k], new[k], where)
            if found:
                return found
        return None
    if old != new:
        return f"{path or 'the config'} was {old!r}, now {new!r}"
    return None


def sweep_record(config: DictConfig) -> dict[str, Any]:
    """What a sweep is: its task overrides (minus :data:`NON_SETTINGS`), its config
    before resolution (no ``hydra``, no :data:`NON_SETTINGS`), its search space."""
    task = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
    params = OmegaConf.select(config, "hydra.sweeper.params")
    return {
        "overrides": settings([str(o) for o in config.hydra.overrides.task]),
        "config": _without(task, NON_SETTINGS),
        "search_space": OmegaConf.to_container(params) if params is not None else None,
    }


def check_sweep_dir(config: DictConfig) -> bool:
    """Record the sweep in its dir, or check that the sweep recorded there is this one.
    Returns whether the sweep continues (the dir held this sweep already); raises a
    :class:`UserError` naming the first difference when it held another one, or jobs of
    a sweep that left no record."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    record = sweep_record(config)
    path = sweep_dir / RECORD
    if path.is_file():
        old = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.load(path))))
        new = json.loads(json.dumps(record))
        if old["overrides"] != new["overrides"]:
            pairs = zip(new["overrides"], old["overrides"], strict=False)
            diff = next(
                (f"{a} where it had {b}" for a, b in pairs if a != b),
                f"{len(new['overrides'])} overrides where it had {len(old['overrides'])}",
            )
            raise UserError(
                f"hydra.sweep.dir={sweep_dir} holds another sweep ({' '.join(old['overrides'])}); "
                f"this one differs: {diff}; continue that sweep with its own command or "
                "choose another hydra.sweep.dir"
            )
        for part in ("config", "search_space"):
            diff = first_difference(old[part], new[part])
            if diff:
                raise UserError(
                    f"hydra.sweep.dir={sweep_dir} holds a sweep of other settings ({diff}); "
                    "continue it with the settings it had, or choose another hydra.sweep.dir"
                )
        return True
    used = list(sweep_dir.glob("*/metrics.json")) if sweep_dir.is_dir() else []
    if used:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds jobs of a sweep that recorded no {RECORD} "
            "(it cannot be continued safely); choose another hydra.sweep.dir"
        )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    OmegaConf.save(OmegaConf.create(record), tmp)
    os.replace(tmp, path)
    return False


def refuse_here(err: UserError) -> None:
    """End the program with ``err``'s one line (exit 2) from inside Hydra, whose
    ``run_and_report`` would print a traceback for an exception (``HYDRA_FULL_ERROR=1``:
    the exception itself)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"Error: {err}", file=sys.stderr, flush=True)
    sys.exit(err.exit_code)


def continue_command(sweep_dir: str | Path) -> str:
    """The command that continues this sweep: ``train.py`` with this command line's
    arguments and ``hydra.sweep.dir=<the sweep's dir>``."""
    args = [
        a
        for a in sys.argv[1:]
        if a not in ADDED and not a.startswith(("hydra.sweep.dir=", "ckpt_path="))
    ]
    if not any(a in ("-m", "--multirun") for a in args):
        args = ["-m", *args]
    script = Path(project_root()) / "train.py"
    return shlex.join(
        [sys.executable, str(script), *args, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"]
    )


def job_overrides(job_dir: Path) -> list[str] | None:
    """The overrides a job dir records (``.hydra/overrides.yaml``), if any."""
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else None


def finished_metrics(job_dir: Path) -> dict[str, Any] | None:
    """The job's ``metrics.json`` if it holds a result (not a failure record)."""
    path = job_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None if metrics.get("status") == "failed" else metrics


def finished_value(job_dir: Path, overrides: list[str], optimized: str) -> float | None:
    """What a finished job returned to the sweeper (its ``optimized`` metric), or None
    when the job has to run. A finished job recorded with other overrides is not this
    sweep's: :class:`UserError`."""
    metrics = finished_metrics(job_dir)
    if metrics is None:
        return None
    recorded = job_overrides(job_dir)
    if recorded is not None and sorted(settings(recorded)) != sorted(settings(list(overrides))):
        raise UserError(
            f"{job_dir} is a job of another sweep ({' '.join(recorded)}), not "
            f"{' '.join(overrides)}; choose another hydra.sweep.dir"
        )
    return float(metrics.get(optimized, float("nan")))


def clear_failure(job_dir: Path) -> None:
    """Before a failed job runs again: its failure records go (a success replaces them)."""
    (job_dir / ERROR_FILE).unlink(missing_ok=True)
    path = job_dir / "metrics.json"
    if path.is_file() and finished_metrics(job_dir) is None:
        path.unlink()


def resume_in_sweep(cfg: DictConfig, out_dir: Path, requeued: bool = False) -> bool:
    """A job of a continued sweep (or a requeued submitit job: ``requeued``) that left a
    ``last.ckpt`` and no result resumes from it (``ckpt_path`` set). Whether it does."""
    last = out_dir / "checkpoints" / "last.ckpt"
    if cfg.get("ckpt_path") or not last.is_file() or finished_metrics(out_dir) is not None:
        return False
    if requeued:
        print(f"requeued job: resuming from {last}", flush=True)
    else:
        print(f"continuing the sweep: job {out_dir.name} resuming from its last.ckpt", flush=True)
    with open_dict(cfg):
        cfg.ckpt_path = str(last)
    return True


def remove_stack_checkpoints(out_dir: Path) -> None:
    """A job's stack checkpoints, once its result is written (they only resume)."""
    for name in (STACK_CHECKPOINT, STACK_PREVIOUS):
        (out_dir / "checkpoints" / name).unlink(missing_ok=True)
