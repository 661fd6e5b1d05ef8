"""``hydra/launcher=stacked``: a sweep's jobs that differ only in ``seed`` train as one
stack in this process (:mod:`gnn_attn.run.stacked`); every job keeps its own dir,
``metrics.json``, ``best.ckpt``, loggers and failure record.

    python train.py -m hydra/launcher=stacked model=gat,gcn data=cora seed='range(10)'

Groups run in turn. A group that cannot stack (a mini-batch loader, a backbone torch.func
cannot batch, a lone seed) says why in one line and runs its jobs one by one,
as Hydra's basic launcher does.
"""

import contextlib
import copy
import io
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gnn_attn.analysis.jobs import INTERRUPTED_FILE
from gnn_attn.console import ranges
from gnn_attn.errors import Interrupted
from gnn_attn.run.build import build_data
from gnn_attn.run.continuation import continue_command
from gnn_attn.run.entry import run_task
from gnn_attn.run.stacked import (
    MemberResult,
    StackOutcome,
    finish_member,
    pick_device,
    train_members,
)
from gnn_attn.run.train import write_json

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.gnn_attn_stacked.stacked_launcher.StackedLauncher"
    readout_every: int = 50  # epochs between the host's read-outs of a stack's metrics
    # larger groups are split into stacks of at most this many; null: 100 on a GPU, 10 on
    # the CPU (where ms per member-epoch is lowest near 10: docs/performance.md)
    max_members: int | None = None
    cuda_graph: bool = True  # on a GPU: replay each epoch as a captured CUDA graph
    n_jobs: int = -1  # CPU: stacks trained at once in worker processes (-1: one per core)
    # on the CPU, also stack backbones that only torch.func can stack (a user's): off, as
    # measured no faster there than one job at a time (docs/stacking.md); GPUs always do
    torch_func_on_cpu: bool = False


ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="gnn_attn"
)


def _is_seed(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") == "seed"


def group_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: the jobs of one stack share it."""
    return tuple(sorted(o for o in overrides if not _is_seed(o)))


def seed_of(overrides: Sequence[str]) -> str | None:
    """The value of a job's ``seed=`` override, if any."""
    found = [o.split("=", 1)[1] for o in overrides if _is_seed(o) and "=" in o]
    return found[-1] if found else None


class StackedLauncher(Launcher):
    def __init__(
        self,
        readout_every: int = 50,
        max_members: int | None = None,
        cuda_graph: bool = True,
        n_jobs: int = -1,
        torch_func_on_cpu: bool = False,
    ) -> None:
        super().__init__()
        self.readout_every, self.max_members = readout_every, max_members
        self.cuda_graph, self.n_jobs = cuda_graph, n_jobs
        self.torch_func_on_cpu = torch_func_on_cpu
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, overrides in enumerate(job_overrides):
            groups.setdefault(group_key(overrides), []).append(i)
        configs: dict[tuple[int, ...], list[DictConfig]] = {}
        for members in groups.values():
            jobs = [job_overrides[i] for i in members]
            cfgs = self._stack_configs(jobs, members, initial_job_idx)
            parts = math.ceil(len(members) / self._stack_size(cfgs[0]))
            size = math.ceil(len(members) / parts)  # even parts: 11 seeds → 6 + 5, not 10 + 1
            for k in range(0, len(members), size):
                configs[tuple(members[k : k + size])] = cfgs[k : k + size]
        lone = [m for m in configs if len(m) == 1]
        stacked = [m for m in configs if len(m) > 1]
        workers = self._workers(configs[stacked[0]][0] if stacked else None, len(stacked))
        print(
            f"stacked launcher: {len(job_overrides)} jobs in {len(configs)} "
            f"stack{'s' if len(configs) != 1 else ''}"
            + (f", {workers} at a time" if workers > 1 else ""),
            flush=True,
        )
        returns: dict[int, JobReturn] = {}
        for members in lone:
            described = " ".join(filter_overrides(configs[members][0].hydra.overrides.task))
            print(f"  one seed ({described}): runs as a lone job", flush=True)
            returns[members[0]] = self._run(configs[members][0], self._task())
        task_cfgs = {m: resolved_task_configs(configs[m]) for m in stacked}
        pending = dict(task_cfgs)
        stopped: list[int] = []  # the signals that interrupted stacks (checkpointed)

        def take(members: tuple[int, ...], outcome: StackOutcome) -> None:
            if outcome.interrupted is not None:  # its jobs stay pending: marked interrupted
                stopped.append(outcome.interrupted)
                return
            for i, ret in zip(members, self._finish(configs[members], outcome), strict=True):
                returns[i] = ret
            del pending[members]
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

        outcomes = self._train(task_cfgs, workers)
        try:
            try:
                for members, outcome in outcomes:
                    take(members, outcome)
            except Interrupted as err:  # the stacks training now checkpoint and stop
                stopped.append(err.signum)  # the signal the line names: the launcher's
                with contextlib.suppress(Interrupted, StopIteration):
                    take(*outcomes.throw(err))
                    for members, outcome in outcomes:
                        take(members, outcome)
        except (Interrupted, SystemExit) as err:  # SystemExit: a member's job was interrupted
            signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
            self._mark_interrupted(pending, signum)
            if isinstance(err, SystemExit):
                raise
            raise Interrupted(signum, self._continue_line()) from None
        if stopped:
            self._mark_interrupted(pending, stopped[0])
            raise Interrupted(stopped[0], self._continue_line())
        return [returns[i] for i in range(len(job_overrides))]

    def _continue_line(self) -> str:
        assert self.config is not None
        command = continue_command(self.config.hydra.sweep.dir)
        return (
            f"during a stacked sweep; its checkpoints are written. Continue it with:\n  {command}"
        )

    def _mark_interrupted(self, pending: dict[Any, list[DictConfig]], signum: int) -> None:
        assert self.config is not None
        command = continue_command(self.config.hydra.sweep.dir)
        for cfgs in pending.values():
            for cfg in cfgs:
                mark_stack_interrupted(
                    Path(cfg.paths.output_dir), signal.Signals(signum).name, command
                )

    def _task(self) -> TaskFunction:
        assert self.task_function is not None
        return self.task_function

    def _stack_size(self, cfg: DictConfig) -> int:
        """``max_members``, or by device: 100 on a GPU, 10 on the CPU."""
        if self.max_members is not None:
            return max(1, int(self.max_members))
        return 100 if pick_device(cfg).type == "cuda" else 10

    def _workers(self, cfg: DictConfig | None, stacks: int) -> int:
        """Stacks trained at once: one on a GPU; on the CPU ``n_jobs`` processes (-1: one
        per core), each with cores // processes torch threads."""
        if cfg is None or stacks < 2 or pick_device(cfg).type == "cuda":
            return 1
        cores = os.cpu_count() or 1
        wanted = cores if self.n_jobs is None or self.n_jobs < 1 else int(self.n_jobs)
        return max(1, min(wanted, stacks, cores))

    def _train(
        self, task_cfgs: dict[tuple[int, ...], list[DictConfig]], workers: int
    ) -> Iterator[tuple[tuple[int, ...], StackOutcome]]:
        """Each stack's outcome, in this process or in ``workers`` processes (in the order
        they finish); an exception here ends the workers. A worker that dies fails its
        stack's jobs, not the sweep."""
        if not task_cfgs:
            return
        args = (self.readout_every, self.cuda_graph, self.torch_func_on_cpu)
        first = next(iter(task_cfgs.values()))[0]
        chosen = int(first.threads) if first.get("threads") else None  # the config's `threads`
        if workers == 1:
            for members, cfgs in task_cfgs.items():
                outcome = train_members(cfgs, *args, chosen, announce=True)
                yield members, outcome
                if outcome.interrupted is not None:
                    return  # the sweep stops here: the next stacks are not started
            return
        threads = chosen or max(1, (os.cpu_count() or 1) // workers)
        for cfg in {str(c[0].data): c[0] for c in task_cfgs.values()}.values():
            build_data(cfg, "fit", sweep=True)  # its cache written once, not by racing workers
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context, initializer=_ignore_signals) as pool:
            futures = {
                pool.submit(_train_in_worker, cfgs, *args, threads): members
                for members, cfgs in task_cfgs.items()
            }
            try:
                for future in as_completed(futures):
                    yield futures[future], _outcome(future, futures[future])
            except Interrupted:  # the workers checkpoint their stacks and stop
                yield from _stop_workers(pool, futures)
                raise
            except BaseException:
                _end_workers(pool)
                raise

    def _stack_configs(
        self, overrides: list[Sequence[str]], members: list[int], initial_job_idx: int
    ) -> list[DictConfig]:
        """Each job's config, as Hydra's basic launcher makes it. The stack's jobs differ
        only in ``seed``, so the first one is composed (~0.2 s) and the others are copies
        with their seed, overrides and job number."""
        assert self.hydra_context is not None and self.config is not None
        first = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides[0]))
        configs = []
        for job_overrides, i in zip(overrides, members, strict=True):
            cfg = copy.deepcopy(first)
            with open_dict(cfg), read_write(cfg):
                seed = seed_of(job_overrides)
                if seed is not None:
                    cfg.seed = int(seed)
                cfg.hydra.overrides.task = list(job_overrides)
                cfg.hydra.job.id = initial_job_idx + i
                cfg.hydra.job.num = initial_job_idx + i
            configs.append(cfg)
        return configs

    def _run(self, cfg: DictConfig, task: TaskFunction) -> JobReturn:
        assert self.hydra_context is not None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _finish(self, configs: list[DictConfig], outcome: StackOutcome) -> list[JobReturn]:
        """Each member's job (its dir, files, loggers), or the jobs one by one where the
        stack could not be built."""
        described = " ".join(filter_overrides(group_key(configs[0].hydra.overrides.task)))
        if outcome.not_stackable:
            print(f"  not stacked ({outcome.not_stackable}): {len(configs)} jobs one by one")
            return [self._run(c, self._task()) for c in configs]
        print(f"  stack of {len(configs)} ({described}; seeds "
              f"{ranges([c.seed for c in configs])}): {outcome.summary}", flush=True)  # fmt: skip
        return [
            self._run(cfg, lambda c, r=result: run_task(finish_member_task(r), c))
            for cfg, result in zip(configs, outcome.results, strict=True)
        ]


def _train_in_worker(
    cfgs: list[DictConfig],
    readout_every: int,
    cuda_graph: bool,
    torch_func_on_cpu: bool,
    threads: int,
) -> bytes:
    """:func:`train_members` in a worker, its outcome serialised by ``torch.save`` (a
    pickled stack of tensors through the process pool would hold a file descriptor per
    tensor until the parent reads it: thousands for a stack of 100)."""
    buffer = io.BytesIO()
    torch.save(train_members(cfgs, readout_every, cuda_graph, torch_func_on_cpu, threads), buffer)
    return buffer.getvalue()


def _outcome(future: Future, members: tuple[int, ...]) -> StackOutcome:
    """A worker's outcome, or the failure of every member where the worker died."""
    try:
        return torch.load(io.BytesIO(future.result()), weights_only=False)
    except Interrupted as err:  # stopped at once (a second signal): no checkpoint
        return StackOutcome(interrupted=err.signum)
    except Exception as err:  # the worker died (killed, out of memory)
        failure = RuntimeError(f"the stack's worker process failed: {err!r}")
        return StackOutcome([MemberResult(error=failure) for _ in members])


def _stop_workers(
    pool: ProcessPoolExecutor, futures: dict[Future, tuple[int, ...]]
) -> Iterator[tuple[tuple[int, ...], StackOutcome]]:
    """After an interrupt: stacks not started are cancelled; the running ones get SIGTERM
    (each ends its block of epochs, writes its checkpoint and returns, interrupted), and
    their outcomes are awaited up to a minute; a second interrupt ends the workers."""
    for future in futures:
        future.cancel()
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
    try:
        done = wait([f for f in futures if not f.cancelled()], timeout=60).done
        for future in done:
            yield futures[future], _outcome(future, futures[future])
    finally:
        _end_workers(pool)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _ignore_signals() -> None:
    """A worker leaves Ctrl-C and SIGTERM to the launcher, which ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def finish_member_task(result: MemberResult) -> Any:
    def task(cfg: DictConfig) -> float:
        return finish_member(cfg, result)

    return task


def resolved_task_configs(configs: list[DictConfig]) -> list[DictConfig]:
    """Each job's task config, resolved as inside its job (``paths.output_dir`` is the
    job's dir): what Hydra's ``run_job`` gives the task, computed ahead. The jobs differ
    only in ``seed`` and their dir, so one template serves them all (resolving each job
    with Hydra's runtime config set costs ~0.1 s a job)."""
    template = OmegaConf.to_container(configs[0], resolve=False)
    assert isinstance(template, dict)
    del template["hydra"]
    out = []
    for cfg in configs:
        job = copy.deepcopy(template)
        job["seed"] = cfg.seed
        job["paths"]["output_dir"] = os.path.abspath(
            os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
        )
        out.append(OmegaConf.create(OmegaConf.to_container(OmegaConf.create(job), resolve=True)))
    return out


def mark_stack_interrupted(out_dir: Path, signal_name: str, command: str) -> None:
    """A member's ``interrupted.json`` (the aggregator lists the job as interrupted):
    ``command`` continues the sweep (the stack from its checkpoints, if written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        out_dir / INTERRUPTED_FILE,
        {"signal": signal_name, "phase": "stacked training", "resume": command},
    )
