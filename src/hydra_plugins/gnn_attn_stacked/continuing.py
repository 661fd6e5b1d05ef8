"""Sweeps that continue: run the same command with the same ``hydra.sweep.dir=`` and the
sweep goes on where it stopped (:mod:`gnn_attn.run.continuation` has the rules).

:class:`ContinuingLauncher` wraps whatever launcher the sweep has (stacked, basic,
joblib, submitit): finished jobs are kept untouched (their result read back), the
others are handed to it at their own job numbers. The sweepers that use it: the
default one (:class:`~hydra_plugins.gnn_attn_stacked.stacked_sweeper.StackedSweeper`)
and :class:`ContinuingOptunaSweeper` (``hparams_search``), which also continues the
stored study up to ``n_trials`` in all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

from gnn_attn.errors import UserError
from gnn_attn.run.continuation import (
    check_sweep_dir,
    clear_failure,
    finished_metrics,
    finished_value,
    job_overrides,
    refuse_here,
    settings,
)

log = logging.getLogger(__name__)
INTERRUPTED = "interrupted"  # an Optuna trial's user attribute: it was running at a kill


class ContinuingLauncher(Launcher):
    """``inner``, except that a job of the sweep dir that finished is not run again (its
    return value is read from its ``metrics.json``), and a job whose overrides are those
    of an unfinished job dir of another number (an Optuna trial retried) runs in that
    dir. The other jobs go to ``inner`` in runs of consecutive job numbers."""

    def __init__(self, inner: Launcher, config: DictConfig) -> None:
        super().__init__()
        self.inner, self.config = inner, config
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"]
        self.numbered = subdir == "${hydra.job.num}"  # job dirs named by job number
        self.kept = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.inner.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _unfinished(self) -> dict[tuple[str, ...], int]:
        """The job dirs with recorded overrides and no result, by their overrides."""
        found = {}
        for d in self.sweep_dir.iterdir() if self.sweep_dir.is_dir() else []:
            recorded = job_overrides(d) if d.name.isdigit() else None
            if recorded is not None and finished_metrics(d) is None:
                found[_identity(recorded)] = int(d.name)
        return found

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        if not self.numbered:  # job dirs this launcher cannot name: as Hydra runs them
            return self.inner.launch(job_overrides, initial_job_idx)
        optimized = str(self.config.get("optimized_metric") or "val/acc_best")
        unfinished = self._unfinished()
        returns: dict[int, JobReturn] = {}
        todo: list[tuple[int, int]] = []  # (position in the batch, job number)
        for pos, overrides in enumerate(job_overrides):
            num = initial_job_idx + pos
            job_dir = self.sweep_dir / str(num)
            if not job_dir.is_dir():  # a retried job runs where it ran before
                num = unfinished.pop(_identity(overrides), num)
                job_dir = self.sweep_dir / str(num)
            try:
                value = finished_value(job_dir, list(overrides), optimized)
            except UserError as err:
                refuse_here(err)
            if value is None:
                clear_failure(job_dir)
                todo.append((pos, num))
                continue
            ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir))
            ret.status, ret.return_value = JobStatus.COMPLETED, value
            returns[pos] = ret
            self.kept += 1
        if returns:
            print(
                f"continuing the sweep in {self.sweep_dir}: {len(returns)} of "
                f"{len(job_overrides)} jobs had finished (kept as they are), "
                f"{len(todo)} to run",
                flush=True,
            )
        start = 0
        while start < len(todo):  # runs of consecutive job numbers
            end = start + 1
            while end < len(todo) and todo[end][1] == todo[end - 1][1] + 1:
                end += 1
            run = todo[start:end]
            rets = self.inner.launch([job_overrides[p] for p, _ in run], initial_job_idx=run[0][1])
            for (pos, _), ret in zip(run, rets, strict=True):
                returns[pos] = ret
            start = end
        return [returns[pos] for pos in range(len(job_overrides))]


def _identity(overrides: Sequence[str]) -> tuple[str, ...]:
    """What identifies a job: its overrides that are settings, in any order."""
    return tuple(sorted(settings(list(overrides))))


def continue_sweep(config: DictConfig) -> bool:
    """:func:`check_sweep_dir` from inside Hydra: one ``Error:`` line when refused."""
    try:
        return check_sweep_dir(config)
    except UserError as err:
        refuse_here(err)
        raise  # not reached


class ContinuingOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper, continuing: pointed at the sweep dir of an interrupted
    search (its study in ``optuna.db``), it runs ``n_trials`` minus the trials that
    ended; a trial that was running when the process died is marked failed
    (``interrupted``) and asked again with its parameters, in its job dir (it resumes
    from its ``last.ckpt`` if it wrote one)."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        impl = self.sweeper
        impl.launcher = ContinuingLauncher(impl.launcher, config)

    def sweep(self, arguments: list[str]) -> Any:
        impl = self.sweeper
        continuing = continue_sweep(impl.config)
        if continuing and impl.storage:
            self._continue_study()
        return super().sweep(arguments)

    def _continue_study(self) -> None:
        import optuna

        impl = self.sweeper
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:  # no study stored yet
            return
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
        for trial in running:  # this process is the study's only writer: they died
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params)
        died = {t.number for t in running}
        ended = [
            t
            for t in trials
            if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED) and t.number not in died
        ]
        impl.job_idx = len(trials)
        impl.n_trials = max(0, int(impl.n_trials) - len(ended))
        print(
            f"continuing the Optuna study {impl.study_name}: {len(ended)} trials had ended, "
            f"{len(running)} interrupted (asked again), {impl.n_trials} to run",
            flush=True,
        )
