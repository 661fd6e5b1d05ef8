"""The one wrapper of ``train.py`` and ``eval.py``: Hydra's command line with one-line
errors, interrupts, W&B closing and sweep failure records.

    python train.py model=gat data=cora        →  main(train, "train")

Before Hydra runs, the command line is composed with Hydra's compose API (a sweep: its
first job, and one job per value of every swept key), so that an unknown choice, a
misspelt key, a wrong type or an output dir that cannot be written is one ``Error:`` line
with exit status 2 and nothing is started. Then Hydra runs ``task(cfg)`` through
:func:`run_task`: a :class:`~gnn_attn.errors.UserError` (constructors' argument errors
arrive as such through :mod:`gnn_attn.run.build`) is one line and exit 2 in a single run,
and the job's ``error.json`` in a sweep, whose other jobs go on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from gnn_attn.callbacks.selection import parse_monitors, validation_only
from gnn_attn.config import conf_dir
from gnn_attn.errors import (
    UserError,
    exits_cleanly,
    interrupt_on_signals,
    is_out_of_memory,
    out_of_memory_error,
)
from gnn_attn.run.build import SETTINGS, model_settings
from gnn_attn.run.sweep import is_multirun, record_failure
from gnn_attn.typecheck import check_config

Task = Callable[[DictConfig], Any]


def main(task: Task, config_name: str) -> None:
    """Check the command line, then run ``task`` under Hydra (``-m``: a sweep). From
    here on SIGINT/SIGTERM end the program with one line (what was saved), exit 130/143."""
    interrupt_on_signals()
    with exits_cleanly():
        if config_name == "train":
            sys.argv[1:] = resume_in_place(sys.argv[1:], config_name)
        sweeper = check_command_line(sys.argv[1:], config_name)
        sys.argv[1:] = with_seed_group_sweeper(sys.argv[1:], sweeper)
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)
    with exits_cleanly():  # an interrupt raised by a launcher (outside any job)
        app(lambda cfg: run_task(task, cfg))()


def run_task(task: Task, cfg: DictConfig) -> Any:
    """``task(cfg)`` as one job: set the threads, turn failures the user caused into one
    line (exit 2) or, in a sweep, into the job's ``error.json`` (the sweep goes on)."""
    threads = threads_per_job(cfg)
    if threads:
        torch.set_num_threads(threads)
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        with exits_cleanly():  # an Interrupted: its one line (what was saved), 128 + signal
            try:
                return task(cfg)
            except Exception as err:
                failure = err
                if is_out_of_memory(err):
                    loader = OmegaConf.select(cfg, "data.loader", default="full")
                    failure = out_of_memory_error(err, loader)
                    failure.__cause__ = err  # error.json keeps the original traceback
                elif unwritable := write_failure(err, cfg):
                    failure = unwritable
                    failure.__cause__ = err
                if is_multirun() and not full_error:
                    with contextlib.suppress(OSError):  # an unwritable job dir: the line says it
                        record_failure(cfg.paths.output_dir, failure)
                    print(f"Error in job {cfg.paths.output_dir}: {failure}", file=sys.stderr)
                    return float("nan")
                if failure is not err:
                    raise failure from err
                raise
    finally:
        finish_wandb()


def write_failure(err: BaseException, cfg: DictConfig) -> UserError | None:
    """An ``OSError`` on a file of the run's own dir (full disk, a read-only mount, a
    folder where a file should go) as one line naming the file and the reason."""
    if not isinstance(err, OSError) or not err.filename:
        return None
    out = OmegaConf.select(cfg, "paths.output_dir", default=None)
    names = [str(n) for n in (err.filename, err.filename2) if n]
    if not out or not any(Path(n).resolve().is_relative_to(Path(out).resolve()) for n in names):
        return None
    return UserError(
        f"cannot write {names[-1]} ({err.strerror or type(err).__name__}); free space or "
        f"choose another output dir (hydra.run.dir=<dir>, hydra.sweep.dir=<dir>)"
    )


def resume_in_place(argv: list[str], config_name: str) -> list[str]:
    """``train.py ckpt_path=<run dir or its last.ckpt>`` continues in that run's own dir
    (Hydra's ``.hydra/`` of the original kept; ``hydra.run.dir=`` on the command line
    resumes into another). ``ckpt_path=auto``: the most recent unfinished run (a
    ``last.ckpt``, no ``metrics.json``) with the same overrides, or a new run when there
    is none. Sweeps (``-m``) are left as they are."""
    given = [a for a in argv if a.startswith("ckpt_path=")]
    if not given or any(a in ("-m", "--multirun") for a in argv):
        return argv
    value = given[-1].split("=", 1)[1]
    rest = [a for a in argv if not a.startswith("ckpt_path=")]
    if value == "auto":
        found = latest_unfinished_run(rest, config_name)
        if found is None:
            print("ckpt_path=auto: no unfinished run with these overrides; starting a new one")
            return rest
        print(f"ckpt_path=auto: resuming {found}")
        value = str(found / "checkpoints" / "last.ckpt")
    path = Path(value).expanduser().resolve()
    run_dir = path if path.is_dir() else path.parent.parent
    resumed = [*rest, f"ckpt_path={value}"]
    if (run_dir / ".hydra").is_dir() and not any(a.startswith("hydra.run.dir=") for a in argv):
        resumed += [f"hydra.run.dir='{run_dir}'", "hydra.output_subdir=null"]
    return resumed


def latest_unfinished_run(overrides: list[str], config_name: str) -> Path | None:
    """The newest run under ``paths.log_dir`` whose ``.hydra/overrides.yaml`` equals
    ``overrides`` and that has a ``last.ckpt`` but no ``metrics.json``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir())):
        cfg = compose(config_name, overrides=[o for o in overrides if not o.startswith("hydra.")])
    wanted = sorted(overrides)
    found = []
    for saved in Path(cfg.paths.log_dir).glob("*/*/.hydra/overrides.yaml"):
        run_dir = saved.parent.parent
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file() or (run_dir / "metrics.json").is_file():
            continue
        theirs = OmegaConf.load(saved)
        if sorted(str(o) for o in theirs) == wanted:
            found.append((last.stat().st_mtime, run_dir))
    return max(found)[1] if found else None


@rank_zero_only
def finish_wandb() -> None:
    """Close this job's W&B run, if any (Hydra's multirun would merge runs otherwise)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def threads_per_job(cfg: DictConfig) -> int | None:
    """``cfg.threads`` if set; under the joblib launcher, cores // parallel jobs (so that
    jobs × threads ≤ cores); under submitit, the launcher's ``cpus_per_task``; else None
    (torch's default)."""
    if cfg.get("threads"):
        return int(cfg.threads)
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", "")).lower()
    if "submitit" in target:
        return launcher.get("cpus_per_task")
    if "joblib" not in target:
        return None
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or -1
    n_jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, cores // max(1, min(n_jobs, cores)))


def check_command_line(argv: list[str], config_name: str) -> str | None:
    """Compose what ``argv`` asks for, as Hydra will, and raise :class:`UserError` with
    one line for the first problem. Runs with other flags (``--cfg``, ``--help``, ...)
    and interval sweeps are left to Hydra. Returns the sweep's ``hydra/sweeper`` choice
    (``None`` for a single run or when left to Hydra)."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-")]
    multirun = len(overrides) < len(argv)
    try:
        jobs = probe_jobs(overrides)
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            composed = []
            for job in jobs:
                cfg = compose(config_name, overrides=job, return_hydra_config=True)
                composed.append(cfg)
                if "model" in cfg:  # its resolvers (e.g. per_head) check their arguments,
                    model_settings(OmegaConf.to_container(cfg.model, resolve=True))  # its types
                check_selection(cfg)
                check_config(cfg, not_arguments={"model": SETTINGS})  # against signatures
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(describe(err)) from err
    missing = [k for k in cfg if k != "hydra" and OmegaConf.is_missing(cfg, k)]
    if missing:
        raise UserError(f"{missing[0]}: missing mandatory value; pass {missing[0]}=...")
    key = "sweep" if multirun or cfg.hydra.mode == RunMode.MULTIRUN else "run"
    _check_writable(Path(OmegaConf.select(cfg, f"hydra.{key}.dir")), f"hydra.{key}.dir")
    if key != "sweep":
        return None
    # Hydra builds the sweeper from the config without the swept values: the first job's
    # choice is it, unless a swept config group (e.g. experiment=a,b) could change it
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    first = composed[0]
    if swept & set(first.hydra.runtime.choices):
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            first = compose(config_name, overrides=fixed, return_hydra_config=True)
    return first.hydra.runtime.choices.get("hydra/sweeper")


def check_selection(cfg: DictConfig) -> None:
    """Validation alone selects: neither ``optimized_metric`` (what a sweeper optimises)
    nor an early-stopping monitor may be a test metric."""
    try:
        if "optimized_metric" in cfg:
            validation_only("optimized_metric", cfg.optimized_metric)
    except ValueError as err:
        raise UserError(str(err)) from err
    monitors = OmegaConf.select(cfg, "early_stopping.monitors")
    if isinstance(monitors, DictConfig):
        raise UserError(
            "early_stopping.monitors is a list of <metric>:min|max entries, e.g. "
            "[val/loss:min, val/acc:max] or [val/acc:max] (a mapping would be merged into "
            "the default instead of replacing it)"
        )
    try:
        if isinstance(monitors, ListConfig):
            parse_monitors(list(monitors))
    except ValueError as err:
        raise UserError(f"early_stopping.{err}") from err


def with_seed_group_sweeper(argv: list[str], sweeper: str | None) -> list[str]:
    """``argv`` with ``hydra/sweeper=stacked`` added when the sweep would use Hydra's
    basic sweeper (``sweeper``, from :func:`check_command_line`) and the command line
    names no sweeper: the same sweeper, except that before launching it composes one job
    per group of jobs that differ only in ``seed`` instead of every job."""
    if sweeper != "basic":
        return argv
    parsed = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    if any(o.key_or_group == "hydra/sweeper" for o in parsed):
        return argv
    return [*argv, "hydra/sweeper=stacked"]


def probe_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of a sweep's first job (each list/range sweep at its first value),
    then one job per other value of every swept key but ``seed`` (checked as integers);
    one job without sweeps."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed, values = [], []
    for o in parsed:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
        elif o.is_discrete_sweep():
            try:
                values.append((o.get_key_element(), list(o.sweep_string_iterator())))
            except HydraException:  # a glob needs Hydra's config loader
                continue
    first = [f"{k}={v[0]}" for k, v in values if v]
    jobs = [fixed + first]
    for i, (key, options) in enumerate(values):
        if key.lstrip("+~") == "seed":  # seeds compose alike: check they are integers, compose one
            bad = [v for v in options if not str(v).lstrip("-").isdigit()]
            if bad:
                raise UserError(f"seed={bad[0]}: a seed is an integer; pass e.g. seed=0,1,2")
            continue
        rest = [f for j, f in enumerate(first) if j != i]
        jobs += [fixed + rest + [f"{key}={v}"] for v in options[1:]]
    return jobs


def describe(err: BaseException) -> str:
    """One line for what Hydra or OmegaConf said about a command line."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, choice = str(err.missing_cfg_file).rpartition("/")
        options = sorted(o for o in (err.options or []) if "/" not in o)
        if group and options:
            return (
                f"unknown {group} '{choice}'; choose one of {', '.join(options)} "
                f"({group}={options[0]})"
            )
    cause: BaseException | None = err
    while cause is not None:  # Hydra wraps OmegaConf's type errors
        if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
            msg = " ".join(str(getattr(cause, "msg", cause)).split())
            return (
                f"{cause.full_key}: {msg}; check the value (python train.py --cfg job shows them)"
            )
        refused = re.match(
            r"(?:ValueError|TypeError) raised while resolving interpolation: "
            r"(.*?)(?: full_key:.*)?$",
            " ".join(str(getattr(cause, "msg", "")).split()),
        )
        if isinstance(cause, InterpolationResolutionError) and refused:
            return f"{cause.full_key}: {refused.group(1)}"  # a resolver refused its arguments
        cause = cause.__cause__
    text = " ".join(str(err).split())
    return f"{text[:300]}; check the spelling (python train.py --cfg job lists the keys)"


def _check_writable(path: Path, key: str) -> None:
    """Raise a :class:`UserError` naming ``path`` and the reason when the output dir
    cannot be created or written: a folder is made and removed where it would start (the
    operating system's answer, not a guess from permission bits: as root they rarely
    stop anything, while ``/proc`` or a read-only mount still does)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    reason = None
    if not probe.is_dir():
        reason = f"{probe} is not a folder"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".gnn_attn_probe_", dir=probe))
        except OSError as err:
            reason = err.strerror or type(err).__name__
    if reason:
        raise UserError(
            f"cannot create the output dir {path} ({reason}); choose another with {key}=<dir>"
        )
