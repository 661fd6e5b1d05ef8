"""``hydra/launcher=stacked``: a sweep's jobs that differ only in ``seed`` train as one
stack in this process (:mod:`gnn_attn.run.stacked`); every job keeps its own dir,
``metrics.json``, ``best.ckpt``, loggers and failure record.

    python train.py -m hydra/launcher=stacked model=gat,gcn data=cora seed='range(10)'

Groups run in turn. A group that cannot stack (a mini-batch loader, a backbone that is
not MLP/GCN/fused GAT, a lone seed) says why in one line and runs its jobs one by one,
as Hydra's basic launcher does.
"""

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gnn_attn.analysis.jobs import INTERRUPTED_FILE
from gnn_attn.errors import Interrupted, UserError
from gnn_attn.run.entry import run_task
from gnn_attn.run.stacked import MemberResult, NotStackable, StackTrainer, finish_member
from gnn_attn.run.train import write_json

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.gnn_attn_stacked.stacked_launcher.StackedLauncher"
    readout_every: int = 50  # epochs between the host's read-outs of a stack's metrics
    max_members: int = 100  # larger groups are split into stacks of at most this many
    cuda_graph: bool = True  # on a GPU: replay each epoch as a captured CUDA graph


ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="gnn_attn"
)


def group_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: the jobs of one stack share it."""
    return tuple(sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed"))


class StackedLauncher(Launcher):
    def __init__(
        self, readout_every: int = 50, max_members: int = 100, cuda_graph: bool = True
    ) -> None:
        super().__init__()
        self.readout_every, self.max_members = readout_every, max(1, int(max_members))
        self.cuda_graph = cuda_graph
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
        stacks = [
            members[k : k + self.max_members]
            for members in groups.values()
            for k in range(0, len(members), self.max_members)
        ]
        print(f"stacked launcher: {len(job_overrides)} jobs in {len(stacks)} stacks", flush=True)
        returns: dict[int, JobReturn] = {}
        for members in stacks:
            configs = [self._job_config(job_overrides[i], initial_job_idx + i) for i in members]
            for i, ret in zip(members, self._launch_stack(configs), strict=True):
                returns[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[i] for i in range(len(job_overrides))]

    def _job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run(self, cfg: DictConfig, task: TaskFunction) -> JobReturn:
        assert self.hydra_context is not None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )

    def _launch_stack(self, configs: list[DictConfig]) -> list[JobReturn]:
        assert self.task_function is not None
        task_cfgs = [resolved_task_config(c) for c in configs]
        described = " ".join(filter_overrides(group_key(configs[0].hydra.overrides.task)))
        seeds = [c.seed for c in task_cfgs]
        if len(configs) == 1:
            print(f"  one seed ({described}): runs as a lone job", flush=True)
            return [self._run(configs[0], self.task_function)]
        try:
            trainer = StackTrainer(task_cfgs, self.readout_every, self.cuda_graph)
        except NotStackable as why:
            print(f"  not stacked ({why}): {len(configs)} jobs one by one", flush=True)
            return [self._run(c, self.task_function) for c in configs]
        except UserError as err:  # every member fails the same way: each job records it
            results = [MemberResult(error=err) for _ in configs]
        else:
            print(
                f"  stack of {len(configs)} ({described}; seeds {_ranges(seeds)}) on "
                f"{trainer.device.type}",
                flush=True,
            )
            try:
                trainer.fit()
            except Interrupted as err:
                for cfg in task_cfgs:
                    mark_interrupted(Path(cfg.paths.output_dir), err)
                raise Interrupted(
                    err.signum, "during a stack's training; run the sweep again"
                ) from None
            results = trainer.results()
        returns = []
        for cfg, result in zip(configs, results, strict=True):
            returns.append(self._run(cfg, lambda c, r=result: run_task(finish_member_task(r), c)))
        return returns


def finish_member_task(result: MemberResult) -> Any:
    def task(cfg: DictConfig) -> Any:
        metrics = finish_member(cfg, result)
        return metrics.get(cfg.get("optimized_metric") or "val/acc_best")

    return task


def resolved_task_config(config: DictConfig) -> DictConfig:
    """The job's task config, resolved as inside its job (``paths.output_dir`` is the
    job's dir): what Hydra's ``run_job`` gives the task, computed ahead."""
    cfg = copy.deepcopy(config)
    HydraConfig.instance().set_config(cfg)
    out = os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = os.path.abspath(out)
    HydraConfig.instance().set_config(cfg)
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(task):
        del task["hydra"]
    return task


def mark_interrupted(out_dir: Path, err: Interrupted) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        out_dir / INTERRUPTED_FILE,
        {"signal": err.signal_name, "phase": "stacked training",
         "resume": "a stack does not resume: run the sweep again"},
    )  # fmt: skip


def _ranges(values: list[int]) -> str:
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
