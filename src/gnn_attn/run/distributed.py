"""Multi-process DDP for a Hydra job: the job is rank 0 and starts the other ranks itself.

Lightning's own DDP launcher re-runs the command line in each child process. Under Hydra
that re-composes the config: every child makes its own time-stamped output dir, and in a
``-m`` sweep a child would re-run the whole sweep. Here the job (rank 0) writes its fully
resolved config once, starts ``python -m gnn_attn.run.distributed CONFIG FUNCTION`` for
ranks 1…W-1 with ``LOCAL_RANK``/``MASTER_PORT`` set (``FUNCTION``: the import path of the
function the job runs, given to :func:`ddp_group`), and sets ``LOCAL_RANK=0`` for itself, so
that Lightning treats the processes as created externally and only joins them. All ranks
share the job's output dir; only rank 0 writes ``metrics.json``, pictures, W&B.

Under SLURM (``hydra/launcher=submitit_slurm`` with ``tasks_per_node`` = devices),
SLURM starts one process per rank and Lightning reads the ranks from SLURM's variables;
nothing is started here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from omegaconf import DictConfig, OmegaConf

from gnn_attn.errors import UserError, exits_cleanly

ENV_KEYS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def world_size(cfg: DictConfig) -> int:
    """Processes the trainer config asks for (1 unless the strategy is DDP)."""
    t = cfg.trainer
    strategy = str(t.get("strategy") or "auto")
    if not strategy.startswith("ddp"):
        return 1
    devices = t.get("devices", 1)
    if isinstance(devices, str) and devices.strip() in ("-1", "auto"):
        devices = -1
    if isinstance(devices, int) and devices < 0:
        on_cpu = t.get("accelerator") == "cpu" or not torch.cuda.is_available()
        devices = (os.cpu_count() or 1) if on_cpu else torch.cuda.device_count()
    n = len(devices) if not isinstance(devices, (int, str)) else int(devices)
    return n * int(t.get("num_nodes", 1) or 1)


def is_worker() -> bool:
    """True in a process some launcher started as one rank of a DDP group."""
    return "LOCAL_RANK" in os.environ


def _under_slurm() -> bool:
    return SLURMEnvironment.detect()


def worker_config(cfg: DictConfig) -> DictConfig:
    """The job's config, resolved, for ranks ≥ 1: same run, no loggers, no pictures,
    nothing printed."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    resolved.logger = {}
    resolved.callbacks = {}
    resolved.print_config = False
    resolved.trainer.enable_progress_bar = False
    if "verbose" in resolved.data:
        resolved.data.verbose = False
    return resolved


@contextmanager
def ddp_group(cfg: DictConfig, fn: Callable[[DictConfig], Any]) -> Iterator[int]:
    """Start ranks 1…W-1 of a DDP run, each running ``fn(cfg)`` (if this process is the
    job, not a worker) and make this process rank 0; yields the world size. On exit:
    wait for the workers (kill them if this rank failed), restore the environment,
    destroy the process group."""
    n = world_size(cfg)
    if n <= 1 or is_worker() or _under_slurm():
        try:
            yield n
        finally:
            if n > 1:  # a rank that leaves its process group alive can abort at exit
                _destroy_process_group()
        return

    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    port = str(find_free_network_port())
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(n), "NODE_RANK": "0"}
    tmp = tempfile.TemporaryDirectory(prefix="gnn_attn_ddp_")
    cfg_path = Path(tmp.name) / "config.yaml"
    OmegaConf.save(worker_config(cfg), cfg_path)
    procs = []
    for rank in range(1, n):
        env = {**os.environ, **base, "LOCAL_RANK": str(rank), "PYTHONUNBUFFERED": "1"}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gnn_attn.run.distributed",
                    str(cfg_path),
                    f"{fn.__module__}:{fn.__qualname__}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
            )
        )
    os.environ.update({**base, "LOCAL_RANK": "0"})
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(procs, done), daemon=True)
    watcher.start()
    ok = False
    try:
        yield n
        ok = True
    finally:
        done.set()
        for p in procs:
            try:
                p.wait(timeout=120 if ok else 5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tmp.cleanup()
    failed = [(r, p.returncode) for r, p in enumerate(procs, 1) if p.returncode]
    if ok and failed:
        raise UserError(f"DDP rank {failed[0][0]} exited with status {failed[0][1]}")


def _destroy_process_group() -> None:
    """Tear down this rank's process group, if it has one. Every rank does it before it
    exits: a worker that left gloo's threads running was seen to end in ``terminate
    called without an active exception`` (status -6) about one run in four on a loaded
    2-core machine, failing a run that had finished."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _watch(procs: list[subprocess.Popen], done: threading.Event) -> None:
    """If a worker dies while rank 0 still runs, rank 0 would wait for it forever in the
    next collective: say so and end the job."""
    while not done.wait(0.5):
        for rank, p in enumerate(procs, 1):
            if p.poll() not in (None, 0) and not done.is_set():
                print(
                    f"Error: DDP rank {rank} exited with status {p.returncode} (its error is "
                    "above); stopping the run",
                    file=sys.stderr,
                    flush=True,
                )
                for q in procs:
                    q.kill()
                os._exit(1)


def _worker_main(path: str, function: str) -> None:
    """Entry point of ranks ≥ 1: run ``function`` (``module:name``) on the job's
    resolved config."""
    module, _, name = function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    cfg = OmegaConf.load(path)
    with exits_cleanly():
        fn(cfg)


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2])
