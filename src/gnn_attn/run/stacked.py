"""Many runs in one process: the jobs of a sweep that differ only in ``seed`` trained
as one stack (:class:`~gnn_attn.models.stacked.StackedNet`), each member with its own
initialisation, dropout masks, optimizer state, early stopping and selected weights.

Why not Lightning's loop: it reads every epoch's metrics on the host (the stop decision,
the callbacks), and on these small graphs the loop, not the arithmetic, is most of an
epoch. Here an epoch — training step, validation forward, the metric sums and each
member's selection update (best values, patience, a masked copy of the selected
weights) — stays on the device; the host reads the block's metrics every
``readout_every`` epochs (for the stop decision and the history). On a GPU the block of
epochs is a CUDA graph (captured once, replayed), where the device allows it.

Each member ends as a lone job does: ``config.yaml``, ``checkpoints/best.ckpt`` (a
Lightning checkpoint of the lone model: ``eval.py`` evaluates it on its own and gets the
same ``test/acc``), ``metrics.json``, the configured loggers (the epoch history, written
when the stack ends) — see :func:`finish_member`. A stack checkpoints (each member's
share in its job dir, :meth:`StackTrainer.save_checkpoint`) on the lone run's schedule
and at Ctrl-C/SIGTERM, and resumes from it when its sweep continues
(:meth:`StackTrainer.resume`, :mod:`gnn_attn.run.continuation`).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor
from torch_geometric.data import Data

from gnn_attn.callbacks.selection import save_atomically
from gnn_attn.console import quiet, ranges
from gnn_attn.errors import (
    Interrupted,
    TrainingDiverged,
    UserError,
    is_out_of_memory,
    out_of_memory_error,
)
from gnn_attn.models import NodeClassifier, count_parameters
from gnn_attn.models.func_stack import FunctionalStack, probe, stack_or_reason
from gnn_attn.models.module import accepts
from gnn_attn.models.stack import LayerStack
from gnn_attn.models.stacked import StackedNet, why_not_stackable
from gnn_attn.run.build import (
    build_data,
    build_data_and_model,
    build_loggers,
    build_model,
    build_node,
    configured_callbacks,
    is_graph_set,
)
from gnn_attn.run.continuation import STACK_CHECKPOINT, STACK_PREVIOUS, run_settings
from gnn_attn.run.train import optimized_value, publish, write_json

HISTORY = ("train/loss", "train/acc", "val/loss", "val/acc")
LIVE = ("csv", "tensorboard")  # the loggers a stack writes as it trains (W&B: at its end)


class NotStackable(UserError):
    """The group cannot train as a stack; the launcher runs its jobs one by one."""


ELEMENTWISE = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


def check_stackable(cfg: DictConfig) -> None:
    """:class:`NotStackable` naming a setting a stack would not honour as a lone run does
    (or a :class:`UserError` for one no run can take)."""
    trainer = cfg.trainer
    if is_graph_set(cfg):
        raise NotStackable("data is a set of graphs: stacks train on one graph, full batch")
    if cfg.data.get("loader", "full") != "full":
        raise NotStackable(f"data.loader={cfg.data.loader}: stacks train full batch only")
    if cfg.get("ckpt_path"):
        raise NotStackable("ckpt_path is set: a stack does not resume")
    if trainer.get("check_val_every_n_epoch", 1) not in (None, 1):
        raise NotStackable("trainer.check_val_every_n_epoch ≠ 1: a stack validates every epoch")
    if trainer.get("gradient_clip_val"):
        raise NotStackable("trainer.gradient_clip_val: clipping by norm would mix the members")
    if str(trainer.get("precision") or 32) not in ("32", "32-true"):
        raise NotStackable(f"trainer.precision={trainer.precision}: stacks train in float32")
    optimizer = str(cfg.model.get("optimizer", "torch.optim.Adam"))
    if optimizer not in ELEMENTWISE:
        raise NotStackable(
            f"model.optimizer={optimizer}: only elementwise optimizers stack "
            f"({', '.join(o.rsplit('.', 1)[1] for o in ELEMENTWISE)})"
        )
    epochs = trainer.get("max_epochs")
    if epochs is not None and epochs < 0:
        raise NotStackable(f"trainer.max_epochs={epochs}: a stack needs a number of epochs")
    if epochs == 0:
        raise UserError("training ran no validation epoch; set trainer.max_epochs ≥ 1")


class Scored(NamedTuple):
    """One stage's batch on the device and its scored rows."""

    x: Tensor
    edge_index: Tensor
    hops: tuple[list[int], list[int]] | None
    y: Tensor  # labels of the scored rows
    rows: slice | Tensor  # the scored rows of the logits (seeds first: a slice)
    batch: Data  # as the lone model takes it (its val/test)

    def logits(self, net: StackedNet) -> Tensor:
        out = net(self.x, self.edge_index, self.hops)
        return out[self.rows] if isinstance(self.rows, slice) else out.index_select(0, self.rows)


def scored_batch(datamodule: Any, stage: str, device: torch.device) -> Scored:
    """The stage's one full batch (the whole graph or the stage's receptive field)."""
    batch = next(iter(getattr(datamodule, f"{stage}_dataloader")()))
    batch = datamodule.transfer_batch_to_device(batch, device, 0)
    if "batch_size" in batch:  # seeds first
        rows: slice | Tensor = slice(0, int(batch.batch_size))
        y = batch.y[: batch.batch_size]
    else:  # static index instead of a boolean mask: no host sync when it is used
        rows = batch[f"{stage}_mask"].nonzero().view(-1)
        y = batch.y.index_select(0, rows)
    hops = None
    if "num_sampled_nodes" in batch:
        hops = (list(batch.num_sampled_nodes), list(batch.num_sampled_edges))
    return Scored(batch.x, batch.edge_index, hops, y, rows, batch)


def member_metrics(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""Each member's mean cross-entropy and accuracy over the scored nodes.

    ``logits`` :math:`(n, S, C)`, ``y`` :math:`(n,)` → loss :math:`(S,)`, acc :math:`(S,)`:
    :math:`\mathcal{L}_s = -\frac{1}{n}\sum_i \log\mathrm{softmax}(\mathbf{z}_{is})_{y_i}`."""
    logp = logits.log_softmax(-1)
    index = y.view(-1, 1, 1).expand(-1, logits.size(1), 1)
    loss = -logp.gather(-1, index).squeeze(-1).mean(0)
    acc = (logits.argmax(-1) == y.view(-1, 1)).to(logits.dtype).mean(0)
    return loss, acc


class MemberSelection:
    r""":class:`~gnn_attn.callbacks.EarlyStoppingCheckpoint`'s rule for every member at
    once, as device tensors (no host sync): after each validation, a monitor improves
    when at least as good as its best so far; any improvement resets the member's
    patience, all of them select the epoch (its weights are copied into the snapshot,
    masked per member); ``patience`` validations without improvement stop the member.
    A stopped member's state no longer changes (its weights still train, unread).

    Args:
        monitors: ``{"val/loss": "min", "val/acc": "max"}``-like, names from
            :data:`HISTORY`.
        patience: 0 turns stopping off.
        params: the stacked parameters to snapshot, each with its member axis.
    """

    def __init__(
        self, monitors: dict[str, str], patience: int, params: list[tuple[Tensor, int]]
    ) -> None:
        self.monitors = monitors
        unknown = [m for m in monitors if m not in HISTORY]
        if unknown:
            raise UserError(
                f"early_stopping monitors {', '.join(unknown)}, which a stack does not "
                f"compute; use some of {', '.join(HISTORY)}"
            )
        first, axis = params[0]
        s, device = first.size(axis), first.device
        self.rows = torch.tensor([HISTORY.index(m) for m in monitors], device=device)
        # improving means sign * value <= sign * best (min: +1, max: -1)
        self.sign = torch.tensor(
            [1.0 if mode == "min" else -1.0 for mode in monitors.values()], device=device
        ).view(-1, 1)
        self.best = torch.full((len(monitors), s), math.inf, device=device)  # sign * best
        self.patience = patience
        self.wait = torch.zeros(s, dtype=torch.long, device=device)
        self.best_epoch = torch.full((s,), -1, dtype=torch.long, device=device)
        self.stop_epoch = torch.full((s,), -1, dtype=torch.long, device=device)
        self.stopped = torch.zeros(s, dtype=torch.bool, device=device)
        self.params = [p for p, _ in params]
        self.masks = [[s if d == axis else 1 for d in range(p.dim())] for p, axis in params]
        self.snapshot = [p.detach().clone() for p in self.params]

    def update(self, metrics: Tensor, epoch: Tensor) -> None:
        """``metrics`` :math:`(|HISTORY|, S)` of epoch ``epoch`` (a 0-d device tensor).
        Every state tensor is updated in place (a CUDA graph replays into the same
        memory)."""
        active = ~self.stopped
        signed = self.sign * metrics.index_select(0, self.rows)
        improved = (signed <= self.best) & active
        selected = improved.all(0)
        torch.where(improved, signed, self.best, out=self.best)
        torch.where(selected, epoch, self.best_epoch, out=self.best_epoch)
        for snap, p, shape in zip(self.snapshot, self.params, self.masks, strict=True):
            torch.where(selected.view(shape), p.detach(), snap, out=snap)
        self.wait.copy_(torch.where(improved.any(0), 0, self.wait + active.long()))
        if self.patience:
            ends = active & (self.wait >= self.patience)
            torch.where(ends, epoch, self.stop_epoch, out=self.stop_epoch)
            self.stopped |= ends

    def select(self, index: Tensor, params: list[tuple[Tensor, int]]) -> MemberSelection:
        """The state of the members at ``index``, for a stack whose parameters are now
        ``params`` (the same order and member axes, fewer members)."""
        kept = MemberSelection(self.monitors, self.patience, params)
        kept.best = self.best.index_select(1, index)
        for name in ("wait", "best_epoch", "stop_epoch", "stopped"):
            setattr(kept, name, getattr(self, name).index_select(0, index))
        kept.snapshot = [
            snap.index_select(axis, index)
            for snap, (_, axis) in zip(self.snapshot, params, strict=True)
        ]
        return kept


class Finished(NamedTuple):
    r"""A member that left the stack: its selected weights (a lone state dict), best and
    stop epochs, and its history :math:`(\text{epochs}, |HISTORY|)`."""

    state: dict[str, Any]
    best_epoch: int
    stop_epoch: int
    history: Tensor


@dataclass
class MemberResult:
    """What a member's job writes (:func:`finish_member`), or why it failed."""

    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    live: list[str] = field(default_factory=list)  # logger kinds written while it trained
    checkpoints: list[Path] = field(default_factory=list)  # its stack checkpoints (removed)


def pick_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class StackTrainer:
    """Trains the members of ``cfgs`` (one config each, equal but for ``seed``) as one
    stack: :meth:`fit` then :meth:`results`. :meth:`run_epochs` is the host-sync-free
    block; :meth:`read_out` the host's look at it."""

    def __init__(
        self,
        cfgs: list[DictConfig],
        readout_every: int = 50,
        cuda_graph: bool = True,
        shrink: bool = True,
        torch_func_on_cpu: bool = False,
    ) -> None:
        quiet()
        base = cfgs[0]
        check_stackable(base)
        self.cfgs, self.readout_every = cfgs, max(1, int(readout_every))
        self.device = pick_device(base)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.graphed = False  # whether the epochs replay a captured CUDA graph
        self.graph: Any = None  # the captured epoch
        self._side: Any = None  # the side stream of eager epochs on a GPU
        self.run_configs = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
        self.datamodule = build_data(base, "fit", sweep=True)
        self.modules: list[NodeClassifier] = [
            build_model(c, self.datamodule, rc)
            for c, rc in zip(cfgs, self.run_configs, strict=True)
        ]
        lone = self.modules[0].net
        reason = why_not_stackable(lone)
        if reason and isinstance(lone, LayerStack):  # a template backbone in a setting
            raise NotStackable(reason)  # its stacked layers do not cover
        self.datamodule.serve_receptive_fields(getattr(lone, "exact_hops", None))
        self.train_batch, self.val_batch, self.test_batch = (
            scored_batch(self.datamodule, stage, self.device) for stage in ("train", "val", "test")
        )
        if reason is None:
            streams = [m.dropout_generator(self.device) for m in self.modules]
            self.net: StackedNet | FunctionalStack = StackedNet(
                [m.net for m in self.modules], streams
            )
        elif self.device.type == "cpu" and not torch_func_on_cpu:
            raise NotStackable(
                f"{type(lone).__name__} stacks only through torch.func, which on the CPU is "
                "no faster than one job at a time (docs/stacking.md; "
                "hydra.launcher.torch_func_on_cpu=true stacks it anyway)"
            )
        else:  # any other backbone: its own forward, batched over members by torch.func
            stacked = stack_or_reason([m.net for m in self.modules])
            if isinstance(stacked, str):
                raise NotStackable(f"{type(lone).__name__}: {stacked}")
            self.net = stacked
        self.net.to(self.device)
        if isinstance(self.net, FunctionalStack):
            why = probe(self.net, self.train_batch.x, self.train_batch.edge_index)
            if why:
                raise NotStackable(f"{type(lone).__name__}: {why}")
            self.cuda_graph = False  # its epochs are not captured as a CUDA graph
        self.optimizer = self._optimizer()
        rule = build_node("early_stopping", base.early_stopping)  # checks its settings
        self.selection = MemberSelection(rule.monitors, rule.patience, self.net.member_axes())
        self.max_epochs = int(base.trainer.get("max_epochs") or 1000)
        s = len(cfgs)
        self.history = torch.zeros(self.max_epochs, len(HISTORY), s, device=self.device)
        self.epoch = torch.zeros((), dtype=torch.long, device=self.device)
        self.epochs_run = 0
        self.member_epochs = 0  # epochs trained, summed over the members in the stack
        self.fit_seconds = 0.0
        self.failed: dict[int, TrainingDiverged] = {}
        self.shrink = shrink
        self.members = list(range(s))  # the member (index into cfgs) at each position
        self.done: dict[int, Finished] = {}  # members that left the stack
        self.report = False  # a progress line at every read-out (the launcher's stacks)
        self.live: dict[int, list[Any]] = {}  # member → its loggers written at read-outs
        self._logged = [0] * s  # epochs of each member's history written to them
        self._best_val = [-math.inf] * s
        schedule = base.get("checkpoint") or {}
        # the lone run's schedule of last.ckpt: every n epochs, else every so many minutes
        self.checkpoint_every = (schedule.get("every_n_epochs"), schedule.get("every_minutes"))
        self._saved_at = time.monotonic()
        self.stop_signal: int | None = None  # SIGINT/SIGTERM received: checkpoint and stop

    def log_live(self) -> None:
        """Start each member's CSV and TensorBoard loggers (``cfg.logger``, W&B aside:
        its run belongs to the member's Hydra job): its epoch history then reaches them at
        every read-out, as the stack trains. Which logger kinds: :data:`LIVE`."""
        for m, (cfg, rc) in enumerate(zip(self.cfgs, self.run_configs, strict=True)):
            loggers = [
                build_node(f"logger.{k}", v)
                for k, v in (cfg.get("logger") or {}).items()
                if k in LIVE
            ]
            for lg in loggers:
                lg.log_hyperparams(rc)
            self.live[m] = loggers

    def _write_live(self) -> None:
        """Each member's epochs since the last read-out (up to its stop) to its loggers
        (a resumed stack's loggers start anew: every epoch so far, also of the members
        that had left the stack)."""
        stops = self.selection.stop_epoch.tolist()
        for m in self.live:
            if m in self.members:
                pos = self.members.index(m)
                history, stop = self.history[:, :, pos], stops[pos]
            else:
                history, stop = self.done[m].history, self.done[m].stop_epoch
            end = self.epochs_run if stop < 0 else min(self.epochs_run, stop + 1)
            rows = history[self._logged[m] : end].tolist()
            for epoch, row in enumerate(rows, start=self._logged[m]):
                entry = dict(zip(HISTORY, row, strict=True))
                self._best_val[m] = max(self._best_val[m], entry["val/acc"])
                entry["val/acc_best"] = self._best_val[m]
                for lg in self.live.get(m, []):
                    lg.log_metrics({**entry, "epoch": epoch}, step=epoch)
            self._logged[m] = max(self._logged[m], end)
        for loggers in self.live.values():
            for lg in loggers:
                lg.save()

    def close_live(self) -> None:
        for m, loggers in self.live.items():
            for lg in loggers:
                lg.finalize("failed" if m in self.failed else "success")

    def progress_line(self) -> str:
        """One line of the stack's state at a read-out: the epoch, the members still
        training, and each member's best ``val/acc`` so far as min / median / max."""
        acc = HISTORY.index("val/acc")

        def best_of(history: Tensor, stop: int) -> float:  # a member's epochs end at its stop
            return float(history[: stop + 1 if stop >= 0 else len(history)].max())

        stops = self.selection.stop_epoch.tolist()
        best = {
            m: best_of(self.history[: self.epochs_run, acc, pos], stops[pos])
            for pos, m in enumerate(self.members)
        }
        best.update({m: best_of(d.history[:, acc], d.stop_epoch) for m, d in self.done.items()})
        values = sorted(v for m, v in best.items() if m not in self.failed)
        training = len(self.members) - int(self.selection.stopped.sum())
        seeds = ranges([int(c.seed) for c in self.cfgs])
        head = f"  stack of seeds {seeds}: epoch {self.epochs_run}/{self.max_epochs}"
        if not values:
            return f"{head} | every member failed"
        return (
            f"{head} | {training} of {len(self.cfgs)} training | best val/acc min "
            f"{values[0]:.3f} median {statistics.median(values):.3f} max {values[-1]:.3f}"
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        """The model config's optimizer on the stacked parameters, with the lone run's
        weight-decay scope (elementwise: each member's update is its lone update)."""
        lone = self.modules[0]
        extra = {}
        if self.cuda_graph and accepts(lone.optimizer_class, "capturable"):
            extra["capturable"] = True  # its step counter on the device: graph-safe
        return lone.make_optimizer(self.net, **extra)

    def run_epochs(self, n: int) -> None:
        """``n`` epochs with no host sync: training step, validation forward, metrics
        into the history, selection update."""
        for _ in range(n):
            self.net.train()
            loss, acc = member_metrics(self.train_batch.logits(self.net), self.train_batch.y)
            self.optimizer.zero_grad(set_to_none=False)
            loss.sum().backward()  # member s's gradient is its own loss's
            self.optimizer.step()
            self.net.eval()
            with torch.no_grad():
                val_loss, val_acc = member_metrics(
                    self.val_batch.logits(self.net), self.val_batch.y
                )
                row = torch.stack([loss.detach(), acc, val_loss, val_acc])
                self.history.index_copy_(0, self.epoch.view(1), row.unsqueeze(0))
                self.selection.update(row, self.epoch)
                self.epoch += 1

    def read_out(self, start: int, end: int) -> bool:
        """The host reads epochs ``start..end-1``: a member whose training loss is not
        finite fails (and stops); returns whether every member has stopped."""
        losses = self.history[start:end, 0].cpu()
        stops = self.selection.stop_epoch.tolist()
        for s in range(losses.size(1)):
            # a stopped member's later epochs are not its run's (its weights train, unread)
            last = end if stops[s] < 0 else min(end, stops[s] + 1)
            bad = (~torch.isfinite(losses[: max(last - start, 0), s])).nonzero()
            if self.members[s] not in self.failed and bad.numel():
                epoch = start + int(bad[0])
                self.failed[self.members[s]] = TrainingDiverged(
                    f"training diverged: train/loss is {float(losses[int(bad[0]), s])} at "
                    f"epoch {epoch}; the learning rate is likely too high: lower model.lr"
                )
                self.selection.stopped[s] = True
                self.selection.stop_epoch[s] = epoch
        return bool(self.selection.stopped.all())

    def fit(self) -> None:
        """Blocks of ``readout_every`` epochs until every member stopped or
        ``trainer.max_epochs``. After a read-out where at least a quarter of the stack has
        stopped, the stopped members leave it (:meth:`_shrink`): the rest train on in a
        smaller stack. On a GPU with ``cuda_graph``, the first block (and the first after
        a shrink) runs eagerly — it builds the caches, gradients and optimizer state — then
        one epoch is captured as a CUDA graph and the later blocks replay it; if a capture
        fails, one line says why and the epochs run eagerly."""
        started, spent = time.perf_counter(), self.fit_seconds  # resumed: time so far
        eager_blocks = 0
        every_n = self.checkpoint_every[0]
        while self.epochs_run < self.max_epochs:
            n = min(self.readout_every, self.max_epochs - self.epochs_run)
            if every_n:  # read out where the schedule writes a checkpoint
                n = min(n, every_n - self.epochs_run % every_n)
            if self.graph is None and self.cuda_graph and eager_blocks > 0:
                self._capture()
            if self.graph is not None:
                for _ in range(n):
                    self.graph.replay()
            else:
                with self._stream():
                    self.run_epochs(n)
                eager_blocks += 1
            self.member_epochs += n * len(self.members)
            start, self.epochs_run = self.epochs_run, self.epochs_run + n
            finished = self.read_out(start, self.epochs_run)
            if self.live:
                self._write_live()
            if self.report:
                print(self.progress_line(), flush=True)
            if finished:
                break
            if self.shrink and self.epochs_run < self.max_epochs and self._shrink():
                eager_blocks = 0
            if self.stop_signal is not None or (
                self.epochs_run < self.max_epochs and self._checkpoint_due()
            ):
                self.fit_seconds = spent + time.perf_counter() - started
                self.save_checkpoint()
            if self.stop_signal is not None:
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.fit_seconds = spent + time.perf_counter() - started

    def _finished(self, pos: int) -> Finished:
        """The member at position ``pos``: its snapshot as a lone state dict, its epochs
        and history so far (on the host)."""
        sel = self.selection
        values = {id(p): snap for p, snap in zip(sel.params, sel.snapshot, strict=True)}
        return Finished(
            self.net.member_state_dict(pos, values),
            int(sel.best_epoch[pos]),
            int(sel.stop_epoch[pos]),
            self.history[: self.epochs_run, :, pos].cpu(),
        )

    def _shrink(self) -> bool:
        """If at least a quarter of the stack has stopped: keep those members' records on
        the host and go on with the others only (:meth:`_drop`). Whether it did."""
        stopped = self.selection.stopped.tolist()
        keep = [pos for pos, done in enumerate(stopped) if not done]
        if not keep or len(keep) > 3 * len(stopped) // 4:
            return False
        for pos, done in enumerate(stopped):
            if done and self.members[pos] not in self.done:
                self.done[self.members[pos]] = self._finished(pos)
        self._drop(keep)
        return True

    def _drop(self, keep: list[int]) -> None:
        """Go on with the members at positions ``keep`` only: their parameters, optimizer
        state, selection state and history selected along the member axis."""
        index = torch.tensor(keep, device=self.device)
        old_axes, old_state = self.net.member_axes(), self.optimizer.state
        self.net.select(index)
        new_axes = self.net.member_axes()
        self.optimizer = self._optimizer()
        for (old, axis), (new, _) in zip(old_axes, new_axes, strict=True):
            if old in old_state:  # Adam's moments are shaped as the parameter
                self.optimizer.state[new] = {
                    k: v.index_select(axis, index)
                    if torch.is_tensor(v) and v.shape == old.shape
                    else (v.clone() if torch.is_tensor(v) else v)
                    for k, v in old_state[old].items()
                }
        self.selection = self.selection.select(index, new_axes)
        self.history = self.history.index_select(2, index)
        self.members = [self.members[pos] for pos in keep]
        self.graph = None  # a captured graph holds the old tensors

    def checkpoint_file(self, m: int, previous: bool = False) -> Path:
        """Member ``m``'s stack checkpoint (``previous``: the one before it)."""
        folder = Path(self.cfgs[m].paths.output_dir) / "checkpoints"
        return folder / (STACK_PREVIOUS if previous else STACK_CHECKPOINT)

    def member_share(self, m: int) -> dict[str, Any]:
        """Member ``m``'s share of the stack's state, everything an exact resume needs:
        its slice of every parameter, of the optimizer state and of the selection state
        (snapshot included), its history, its dropout stream; or its record if it has
        left the stack (stopped or failed); and the stack's epoch, counters and RNG."""
        state: dict[str, Any] = {
            "epoch": self.epochs_run,
            "member_epochs": self.member_epochs,
            "fit_seconds": self.fit_seconds,
            "settings": run_settings(self.run_configs[m]),
            "rng": torch.get_rng_state(),
            "threads": torch.get_num_threads(),  # CPU rounding can depend on them
        }
        if m in self.failed:
            state["failed"] = str(self.failed[m])
        if m in self.done:
            state["done"] = self.done[m]._asdict()
        if m not in self.members:
            return state
        pos, sel = self.members.index(m), self.selection
        axes = self.net.member_axes()

        def part(t: Tensor, axis: int) -> Tensor:
            return t.detach().select(axis, pos).cpu().clone()

        state["params"] = [part(p, axis) for p, axis in axes]
        state["optimizer"] = [
            {
                k: ("slice", part(v, axis))
                if torch.is_tensor(v) and v.shape == p.shape
                else ("shared", v.clone() if torch.is_tensor(v) else v)
                for k, v in self.optimizer.state.get(p, {}).items()
            }
            for p, axis in axes
        ]
        state["selection"] = {
            "best": sel.best[:, pos].cpu(),
            **{k: getattr(sel, k)[pos].cpu() for k in ("wait", "best_epoch", "stop_epoch")},
            "stopped": sel.stopped[pos].cpu(),
            "snapshot": [
                part(snap, axis) for snap, (_, axis) in zip(sel.snapshot, axes, strict=True)
            ],
        }
        state["history"] = self.history[: self.epochs_run, :, pos].cpu()
        streams = getattr(self.net, "streams", None)
        stream = streams[pos] if streams else None
        state["stream"] = stream.get_state() if stream is not None else None
        return state

    def save_checkpoint(self) -> None:
        """Every member's :meth:`member_share` into its job dir
        (``checkpoints/stack.ckpt``, atomically), the one it replaces kept as
        ``stack.prev.ckpt``: a kill between two members' writes leaves every member a
        file of the earlier epoch (:meth:`resume` takes the latest epoch all have)."""
        for m in range(len(self.cfgs)):
            path = self.checkpoint_file(m)
            if path.is_file():
                os.replace(path, self.checkpoint_file(m, previous=True))
            save_atomically(self.member_share(m), path)
        self._saved_at = time.monotonic()

    def _read_checkpoints(self) -> list[dict[str, Any]] | None:
        """Each member's checkpoint at the latest epoch all members have one of, if
        they all have one and it was written for their settings."""
        found: list[dict[int, dict[str, Any]]] = []
        for m in range(len(self.cfgs)):
            by_epoch = {}
            for previous in (False, True):
                path = self.checkpoint_file(m, previous)
                try:
                    state = torch.load(path, map_location="cpu", weights_only=False)
                except Exception:  # missing, or cut short by a kill (the other one serves)
                    continue
                if state.get("settings") == run_settings(self.run_configs[m]):
                    by_epoch[int(state["epoch"])] = state
            if not by_epoch:
                return None
            found.append(by_epoch)
        epoch = min(max(by_epoch) for by_epoch in found)
        if any(epoch not in by_epoch for by_epoch in found):
            return None
        return [by_epoch[epoch] for by_epoch in found]

    def resume(self) -> int | None:
        """Continue from the members' stack checkpoints (:meth:`save_checkpoint`) when
        every member has one at a common epoch; returns that epoch (None: from the start).
        The stack then trains on exactly as the unbroken one: bit for bit on the CPU."""
        states = self._read_checkpoints()
        if states is None:
            return None
        for m, st in enumerate(states):
            if "failed" in st:
                self.failed[m] = TrainingDiverged(st["failed"])
            if "done" in st:
                self.done[m] = Finished(**st["done"])
        keep = [m for m, st in enumerate(states) if "params" in st]
        if len(keep) < len(self.cfgs):
            self._drop(keep)
        axes, sel = self.net.member_axes(), self.selection
        with torch.no_grad():
            for pos, m in enumerate(keep):
                st = states[m]
                for (p, axis), value in zip(axes, st["params"], strict=True):
                    p.select(axis, pos).copy_(value)
                for (_, axis), snap, value in zip(
                    axes, sel.snapshot, st["selection"]["snapshot"], strict=True
                ):
                    snap.select(axis, pos).copy_(value)
                sel.best[:, pos] = st["selection"]["best"]
                for k in ("wait", "best_epoch", "stop_epoch", "stopped"):
                    getattr(sel, k)[pos] = st["selection"][k]
                self.history[: st["epoch"], :, pos] = st["history"]
                streams = getattr(self.net, "streams", None)
                if streams and streams[pos] is not None and st["stream"] is not None:
                    streams[pos].set_state(st["stream"])
        for i, (p, axis) in enumerate(axes):
            entries = [states[m]["optimizer"][i] for m in keep]
            if entries[0]:
                self.optimizer.state[p] = {
                    k: torch.stack([e[k][1] for e in entries], axis).to(p.device)
                    if kind == "slice"
                    else value
                    for k, (kind, value) in entries[0].items()
                }
        first = states[0]
        self.epochs_run = int(first["epoch"])
        self.epoch.fill_(self.epochs_run)
        self.member_epochs, self.fit_seconds = first["member_epochs"], first["fit_seconds"]
        torch.set_rng_state(first["rng"])
        if self.device.type == "cpu":  # the unbroken stack's threads: its rounding
            torch.set_num_threads(int(first.get("threads") or torch.get_num_threads()))
        return self.epochs_run

    def _checkpoint_due(self) -> bool:
        """Whether the schedule of ``checkpoint`` (as a lone run's) asks for a write now."""
        every_n, minutes = self.checkpoint_every
        if every_n:
            return self.epochs_run % every_n == 0
        return minutes is not None and time.monotonic() - self._saved_at >= 60 * minutes

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        """Eager epochs on a side stream on a GPU (what a later capture needs); the
        default stream waits for them on the way out (the read-out comes next)."""
        if self.device.type != "cuda":
            yield
            return
        main = torch.cuda.current_stream(self.device)
        self._side = self._side or torch.cuda.Stream(self.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            yield
        main.wait_stream(self._side)

    def _capture(self) -> None:
        """One epoch captured as ``self.graph``; on failure eager epochs from then on."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.run_epochs(1)
        except Exception as err:  # an op that syncs or cannot be captured
            torch.cuda.synchronize()
            print(f"  CUDA graph capture failed ({type(err).__name__}: {err}); eager epochs")
            self.cuda_graph = False
            return
        self.graphed = True
        self.graph = graph

    def results(self) -> list[MemberResult]:
        """Each member's selected weights, tested as a lone model, its history and
        checkpoint."""
        members = len(self.cfgs)
        ms_per_epoch = 1000 * self.fit_seconds / max(self.member_epochs, 1)
        out = []
        for s, (cfg, module) in enumerate(zip(self.cfgs, self.modules, strict=True)):
            if s in self.failed:
                out.append(MemberResult(error=self.failed[s]))
                continue
            record = self.done.get(s) or self._finished(self.members.index(s))
            epochs = record.stop_epoch + 1 if record.stop_epoch >= 0 else self.epochs_run
            best = record.best_epoch
            if best < 0:
                out.append(MemberResult(error=UserError(
                    "training ran no validation epoch; set trainer.max_epochs ≥ 1")))  # fmt: skip
                continue
            module.net.load_state_dict(record.state)
            module.to(self.device)
            fit = module.score(self.train_batch.batch, "train")
            val = module.score(self.val_batch.batch, "val")
            test = module.score(self.test_batch.batch, "test")
            rows = _history_rows(record.history[:epochs])
            # as a lone run reports it: the best val/acc up to the selected epoch (what
            # best.ckpt stores and eval restores)
            module.val_acc_best = max(r["val/acc"] for r in rows[: best + 1])
            out_dir = Path(cfg.paths.output_dir)
            metrics = {
                "dataset": self.datamodule.name,
                "model": self.run_configs[s]["model"].get("name"),
                "seed": cfg.seed,
                "test/acc": test["test/acc"],
                "test/loss": test["test/loss"],
                **module.test_summary(self.datamodule.class_names),
                "train/acc": fit["train/acc"],
                "train/loss": fit["train/loss"],
                "val/acc": val["val/acc"],
                "val/loss": val["val/loss"],
                "val/acc_best": module.val_acc_best,
                "best_epoch": best,
                "epochs": epochs,
                "fit_seconds": round(self.fit_seconds / members, 4),
                "ms_per_epoch": round(ms_per_epoch, 3),
                "stack": {
                    "members": members,
                    "epochs": self.epochs_run,
                    "member_epochs": self.member_epochs,
                    "fit_seconds": round(self.fit_seconds, 4),
                    "device": str(self.device),
                    "readout_every": self.readout_every,
                },
                "num_params": count_parameters(module.net),
                "checkpoint": str(out_dir / "checkpoints" / "best.ckpt"),
                "output_dir": str(out_dir),
            }
            out.append(MemberResult(metrics, rows, member_checkpoint(module, best)))
        return out


def _history_rows(values: Tensor) -> list[dict[str, float]]:
    """One member's ``(epochs, |HISTORY|)`` history as rows with ``val/acc_best``."""
    rows, best = [], -math.inf
    for epoch, row in enumerate(values.tolist()):
        entry = dict(zip(HISTORY, row, strict=True))
        best = max(best, entry["val/acc"])
        rows.append({**entry, "val/acc_best": best, "epoch": epoch})
    return rows


def member_checkpoint(module: NodeClassifier, epoch: int) -> dict[str, Any]:
    """A Lightning checkpoint of the lone model with the member's selected weights, as
    :class:`~gnn_attn.callbacks.EarlyStoppingCheckpoint` writes ``best.ckpt`` (weights,
    hyperparameters with the run config; no optimizer or loop state: not resumable)."""
    return {
        "epoch": epoch,
        "global_step": epoch + 1,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "callbacks": {},
        "hparams_name": "kwargs",
        "hyper_parameters": dict(module.hparams),
        "val_acc_best": module.val_acc_best,
    }


@contextlib.contextmanager
def stop_on_signals(trainer: StackTrainer) -> Iterator[None]:
    """While the stack trains, SIGINT or SIGTERM ends the current block of epochs, writes
    the stack's checkpoint and stops it (``trainer.stop_signal``); a second signal stops
    at once (:class:`~gnn_attn.errors.Interrupted`), unless it is the other one of the
    two (a worker gets the terminal's SIGINT and the launcher's SIGTERM)."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_signal == signum:  # (a Ctrl-C, then the launcher's SIGTERM: one)
            raise Interrupted(signum, "a second signal: the stack stopped without a checkpoint")
        trainer.stop_signal = trainer.stop_signal or signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class StackOutcome:
    """What training a stack gave: each member's result, or why it could not stack."""

    results: list[MemberResult] = field(default_factory=list)
    not_stackable: str | None = None
    summary: str = ""
    interrupted: int | None = None  # the signal that stopped it (its checkpoints written)


def train_members(
    cfgs: list[DictConfig],
    readout_every: int,
    cuda_graph: bool,
    torch_func_on_cpu: bool,
    threads: int | None,
    announce: bool = False,
) -> StackOutcome:
    """Train ``cfgs`` (equal but for ``seed``) as one stack: the launcher's unit of work,
    run in its process or in a worker (``threads``: torch threads there)."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        return _train_members(cfgs, readout_every, cuda_graph, torch_func_on_cpu, announce)
    finally:
        torch.set_num_threads(before)


def _train_members(
    cfgs: list[DictConfig],
    readout_every: int,
    cuda_graph: bool,
    torch_func_on_cpu: bool,
    announce: bool,
) -> StackOutcome:
    try:
        trainer = StackTrainer(cfgs, readout_every, cuda_graph, torch_func_on_cpu=torch_func_on_cpu)
    except NotStackable as why:
        return StackOutcome(not_stackable=str(why))
    except UserError as err:  # every member fails the same way: each job records it
        return StackOutcome([MemberResult(error=err) for _ in cfgs], summary=str(err))
    resumed = trainer.resume()
    if announce or resumed:
        print(
            f"  training a stack of {len(cfgs)} on {trainer.device.type}"
            + (f", resumed at epoch {resumed} from its checkpoints" if resumed else ""),
            flush=True,
        )
    trainer.report = True
    trainer.log_live()
    try:
        with stop_on_signals(trainer):
            trainer.fit()
        if trainer.stop_signal is not None:
            return StackOutcome(
                interrupted=trainer.stop_signal,
                summary=f"interrupted at epoch {trainer.epochs_run}, checkpoints written",
            )
        results = trainer.results()
        for result, member in zip(results, range(len(cfgs)), strict=True):
            result.live = list(LIVE) if member in trainer.live else []
            result.checkpoints = [
                trainer.checkpoint_file(member, previous) for previous in (False, True)
            ]
    except Exception as err:  # e.g. out of memory: every member's job records it
        failure = out_of_memory_error(err, "full") if is_out_of_memory(err) else err
        return StackOutcome([MemberResult(error=failure) for _ in cfgs], summary=str(failure))
    finally:
        trainer.close_live()
    summary = (
        f"{trainer.epochs_run} epochs in {trainer.fit_seconds:.1f} s on {trainer.device.type}"
        f"{' (CUDA graph)' if trainer.graphed else ''} "
        f"({1000 * trainer.fit_seconds / trainer.member_epochs:.2f} ms per member-epoch)"
    )
    return StackOutcome(results, summary=summary)


def finish_member(cfg: DictConfig, result: MemberResult) -> float:
    """Member ``cfg``'s job, inside its Hydra job (its dir and W&B names): raise its
    failure, or write what a lone run writes and return ``cfg.optimized_metric``."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    if result.error is not None:
        for path in result.checkpoints:
            path.unlink(missing_ok=True)
        if isinstance(result.error, TrainingDiverged):
            write_json(out_dir / "metrics.json", {"status": "failed", "error": str(result.error)})
        raise result.error
    save_atomically(result.checkpoint, result.metrics["checkpoint"])
    run_config = OmegaConf.to_container(cfg, resolve=True)
    rest = cfg.copy()  # the loggers the stack did not write as it trained (W&B)
    with open_dict(rest):
        rest.logger = {k: v for k, v in (cfg.get("logger") or {}).items() if k not in result.live}
    loggers = build_loggers(rest)
    for lg in loggers:
        lg.log_hyperparams(run_config)
        for row in result.history:
            lg.log_metrics(row, step=row["epoch"])
    metrics = {**result.metrics, **member_pictures(cfg, result.checkpoint["state_dict"], loggers)}
    for lg in loggers:
        lg.finalize("success")
    publish(metrics, loggers, out_dir)
    return optimized_value(cfg, metrics)


def member_pictures(cfg: DictConfig, selected: dict[str, Tensor], loggers: list) -> dict[str, Any]:
    """The ``callbacks`` of member ``cfg`` (its pictures), as its lone run has them, on a
    real Trainer: the "before" ones (``on_fit_start``) on its initial weights — the model
    built from its seed, as the stack built it — then the "after" ones (``on_test_end``)
    on its selected weights ``selected`` (a state dict of the module). Returns the
    numbers they computed (for ``metrics.json``)."""
    callbacks = configured_callbacks(cfg)
    if not callbacks:
        return {}
    run_config = OmegaConf.to_container(cfg, resolve=True)
    datamodule, module = build_data_and_model(cfg, "fit", run_config)
    trainer: L.Trainer = build_node(
        "trainer",
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        max_epochs=0,  # fit: its start only (the pictures before training)
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    module.load_state_dict(selected)
    trainer.test(module, datamodule=datamodule, verbose=False)
    summary: dict[str, Any] = {}
    for cb in callbacks:
        summary.update(getattr(cb, "summary", None) or {})
    return summary
