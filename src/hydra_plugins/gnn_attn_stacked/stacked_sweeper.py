"""``hydra/sweeper=stacked``: Hydra's basic sweeper (same ``params``, same job list),
except that before launching it composes one job per group of jobs that differ only in
``seed``, not every job. ``train.py`` puts it in the basic sweeper's place unless the
command line names a sweeper (:func:`gnn_attn.run.entry.with_seed_group_sweeper`).

The basic sweeper composes every job's config before launching the batch (to catch
errors early): 6.0 s for a sweep of 10 seeds under cProfile here, so tens of seconds of
the 80-job paper table and minutes of the 800-job 100-seed table. Jobs that differ only
in ``seed`` compose alike, so one of them stands for its group; the seeds themselves are
checked as integers.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.gnn_attn_stacked.continuing import ContinuingLauncher, continue_sweep
from hydra_plugins.gnn_attn_stacked.stacked_launcher import group_key, seed_of


@dataclass
class StackedSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.gnn_attn_stacked.stacked_sweeper.StackedSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="stacked", node=StackedSweeperConf, provider="gnn_attn"
)


class StackedSweeper(BasicSweeper):
    """Also continues an interrupted sweep pointed at its own dir
    (:mod:`hydra_plugins.gnn_attn_stacked.continuing`)."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        assert self.launcher is not None
        self.launcher = ContinuingLauncher(self.launcher, config)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None
        continue_sweep(self.config)  # before Hydra writes multirun.yaml
        return super().sweep(arguments)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        first: dict[tuple[str, ...], Sequence[str]] = {}
        for overrides in batch:
            first.setdefault(group_key(overrides), overrides)
            seed = seed_of(overrides)
            if seed is not None and not seed.lstrip("-").isdigit():
                raise HydraException(f"seed={seed}: a seed is an integer")
        super().validate_batch_is_legal(list(first.values()))
