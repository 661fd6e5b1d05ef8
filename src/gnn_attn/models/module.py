"""The LightningModule that trains any backbone to classify nodes, and the settings a
model config holds besides the backbone's own arguments."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from omegaconf import MISSING
from torch import Tensor, nn
from torch_geometric.data import Data
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from gnn_attn.errors import TrainingDiverged
from gnn_attn.models.sparse import dropout_stream

DECAY_SCOPES = ("all", "weights", "first_layer")


@dataclass
class ModelSettings:
    """The keys of a ``model`` config that belong to the template; every other key of
    that config is an argument of the backbone its ``_target_`` names."""

    name: str = MISSING  # the model's name in metrics.json and result tables
    order: int = 100  # its row in result tables (smaller first)
    paper_table: bool = False  # part of experiment=paper_table
    lr: float = MISSING
    weight_decay: float = 0.0
    weight_decay_on: str = "all"  # all | weights (not biases) | first_layer
    optimizer: str = "torch.optim.Adam"  # class taking (params, lr=, weight_decay=)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name``."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def first_layer(net: nn.Module) -> nn.Module:
    """The layer ``weight_decay_on=first_layer`` decays: ``net.first_layer`` where the
    backbone names one, else its first child module, in registration order, that holds
    parameters, looked for inside containers (``ModuleList``, ``Sequential``,
    ``ModuleDict``): ``conv1`` of a backbone that registers ``conv1`` first,
    ``convs[0]`` of one with ``self.convs = ModuleList(...)``; a backbone with no child
    holding parameters (an ``nn.Linear``) is its own first layer. Parameters a backbone
    holds itself beside its layers (a learnable ``eps``) are not its first layer."""
    named = getattr(net, "first_layer", None)
    if isinstance(named, nn.Module):
        return named
    module = net
    while True:
        children = [c for c in module.children() if next(c.parameters(), None) is not None]
        if not children:
            return module
        module = children[0]
        if not isinstance(module, CONTAINERS):
            return module


def decay_groups(net: nn.Module, scope: str) -> list[dict[str, Any]]:
    """``net``'s parameters as optimizer groups for an L2 penalty on ``scope``: ``all``
    (one group), ``weights`` (not biases) or ``first_layer`` (:func:`first_layer`'s); the
    other parameters get ``weight_decay`` 0."""
    params = list(net.named_parameters())
    if scope == "all":
        return [{"params": [p for _, p in params]}]
    if scope == "weights":
        decay = [p for n, p in params if not n.endswith("bias")]
    else:
        decay = list(first_layer(net).parameters())
    ids = {id(p) for p in decay}
    rest = [p for _, p in params if id(p) not in ids]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


class NodeClassifier(L.LightningModule):
    r"""Cross-entropy node classification with any backbone.

    A batch comes from the data module: the whole graph (the loss and the metrics use
    the nodes of the stage's mask ``train_mask``/``val_mask``/``test_mask``), a batch
    whose first ``batch.batch_size`` nodes are the ones scored ("seeds first": a sampled
    mini-batch, or a split's receptive field), or a batch of graphs whose
    ``target_mask`` marks the scored nodes
    (:class:`~gnn_attn.data.graph_set.GraphSetDataModule`). With :math:`\mathcal{V}_s` those nodes,

    .. math::
        \mathcal{L} = -\frac{1}{|\mathcal{V}_s|}\sum_{i \in \mathcal{V}_s}
        \log \mathrm{softmax}(f_\theta(\mathbf{X}, \mathcal{E})_i)_{y_i}

    The backbone is called as ``net(x, edge_index)``; a backbone whose ``forward`` takes
    ``num_sampled_nodes_per_hop``/``num_sampled_edges_per_hop`` (PyG's convention) also
    gets the hop sizes of seeds-first batches, to trim its layers.

    Metrics per epoch, exact means over every scored node (each batch adds its loss
    sum, correct count and node count; at the epoch's end they are summed over DDP ranks
    and divided): ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``val/acc_best`` (the best ``val/acc`` so far), ``test/loss``, ``test/acc``. Not
    ``torchmetrics``: two ``MeanMetric`` per stage cost 1.0–1.1 ms per epoch (train +
    val) against 0.09–0.12 ms for these sums on this 2-core CPU (2026-11-29, interleaved,
    2000 epochs), a fifth of a full-batch GAT epoch on CiteSeer.

    The test stage, which runs once on the selected weights, also keeps a report through
    ``torchmetrics`` (synchronised over DDP ranks by it): :attr:`test_report` holds
    ``test/f1_macro`` (F1 of each class, averaged with equal weights), ``test/acc_per_class``
    (the recall of each class, :math:`C` values) and ``confusion`` (:math:`(C, C)` counts,
    rows = labels, columns = predictions); :meth:`test_summary` names the classes.

    During ``fit`` they go to ``trainer.callback_metrics`` (read by early stopping and
    the progress bar) and to the loggers directly, once per epoch (:meth:`_publish`):
    ``self.log`` costs ~0.8 ms per call on this CPU (Lightning 2.6 moves each result
    entry on every call), as much as a full-batch GAT epoch. ``validate``/``test`` use
    ``self.log``, so that their return values are Lightning's.

    Args:
        net: the backbone, ``net(x, edge_index) -> logits (N, C)``.
        lr: learning rate.
        weight_decay: L2 penalty of the optimizer.
        weight_decay_on: the parameters it applies to: ``all`` (the official GAT code),
            ``weights`` (not biases) or ``first_layer`` (the GCN paper: the parameters of
            :func:`first_layer`, any backbone's first layer).
        optimizer: import path of the optimizer class (``torch.optim.Adam``).
        run_config: the resolved run config, saved as a hyperparameter (``eval.py``
            rebuilds the run from it).
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float,
        weight_decay: float = 0.0,
        weight_decay_on: str = "all",
        optimizer: str = "torch.optim.Adam",
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"lr must be > 0 (got {lr!r})")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
            raise TypeError(f"weight_decay must be a number (got {weight_decay!r})")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0 (got {weight_decay})")
        if weight_decay_on not in DECAY_SCOPES:
            raise ValueError(
                f"weight_decay_on must be one of {', '.join(DECAY_SCOPES)} "
                f"(got '{weight_decay_on}')"
            )
        self.optimizer_class = get_class(optimizer)
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.val_acc_best = 0.0
        self._takes_hops = accepts(net.forward, "num_sampled_nodes_per_hop")
        # per stage: (loss × nodes, correct) summed over this epoch's batches, and nodes
        self._sums: dict[str, tuple[Tensor, int]] = {}
        self.test_report: dict[str, Any] = {}
        self._report: MetricCollection | None = None  # while a test stage runs
        # the run's own dropout stream (drawn after the backbone's initialisation: it
        # depends on the seed alone); one generator per device, made when first used
        self.dropout_seed = int(torch.randint(0, 2**62, ()))
        self._generators: dict[str, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}  # restored from a checkpoint

    def forward(self, data: Data) -> Tensor:
        """Logits :math:`(N, C)` for the nodes of ``data`` (a batch that trims: of its
        seeds)."""
        if self._takes_hops and "num_sampled_nodes" in data:
            return self.net(
                data.x,
                data.edge_index,
                num_sampled_nodes_per_hop=data.num_sampled_nodes,
                num_sampled_edges_per_hop=data.num_sampled_edges,
            )
        return self.net(data.x, data.edge_index)

    def _step(self, batch: Data, stage: str) -> Tensor:
        """Loss on the scored nodes of one batch; adds them to the epoch's metrics."""
        logits = self(batch)
        if "target_mask" in batch:  # a batch of graphs: their scored nodes
            logits, y = logits[batch.target_mask], batch.y[batch.target_mask]
        elif "batch_size" in batch:  # seeds first
            logits, y = logits[: batch.batch_size], batch.y[: batch.batch_size]
        else:  # the whole graph: the stage's mask
            mask = batch[f"{stage}_mask"]
            logits, y = logits[mask], batch.y[mask]
        loss = F.cross_entropy(logits, y)
        n = y.numel()
        sums = torch.stack(
            [loss.detach() * n, (logits.detach().argmax(-1) == y).sum().to(loss.dtype)]
        )
        acc = self._sums.get(stage)
        self._sums[stage] = (sums if acc is None else acc[0] + sums, n + (acc[1] if acc else 0))
        if stage == "test":
            self._update_report(logits.detach().argmax(-1), y, logits.shape[-1])
        return loss

    def _update_report(self, preds: Tensor, y: Tensor, num_classes: int) -> None:
        if self._report is None:  # not a submodule: no state in checkpoints
            self.__dict__["_report"] = MetricCollection(
                {
                    "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                    "acc_per_class": MulticlassAccuracy(num_classes, average=None),
                    "confusion": MulticlassConfusionMatrix(num_classes),
                },
                compute_groups=False,
            ).to(preds.device)
        self._report.update(preds, y)

    def _close_report(self) -> None:
        """The finished test stage's :attr:`test_report`."""
        report, self.__dict__["_report"] = self._report, None
        if report is None:
            return
        values = report.compute()
        self.test_report = {
            "test/f1_macro": float(values["f1_macro"]),
            "test/acc_per_class": [float(v) for v in values["acc_per_class"]],
            "confusion": values["confusion"].cpu(),
        }

    def test_summary(self, class_names: list[str]) -> dict[str, Any]:
        """The last test's ``test/f1_macro`` and ``test/acc_per_class`` (class name →
        accuracy on its test nodes), for ``metrics.json``."""
        if not self.test_report:
            return {}
        per_class = self.test_report["test/acc_per_class"]
        return {
            "test/f1_macro": self.test_report["test/f1_macro"],
            "test/acc_per_class": dict(zip(class_names, per_class, strict=False)),
        }

    def on_train_start(self) -> None:
        self._sums.clear()

    def dropout_generator(self, device: torch.device) -> torch.Generator:
        """The generator every dropout mask of the template's layers is drawn from while
        this module trains on ``device`` (:func:`~gnn_attn.models.sparse.dropout_stream`):
        seeded with :attr:`dropout_seed`, so the masks of a run depend on its seed alone,
        and a stacked member drawing from its own copy gets the lone run's masks. Its
        state is in the checkpoints (an exact resume)."""
        key = str(torch.device(device))
        if key not in self._generators:
            gen = torch.Generator(device=device).manual_seed(self.dropout_seed)
            if key in self._generator_states:
                gen.set_state(self._generator_states.pop(key))
            self._generators[key] = gen
        return self._generators[key]

    def training_step(self, batch: Data, batch_idx: int) -> Tensor:
        with dropout_stream(self.dropout_generator(batch.x.device)):
            loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training diverged: train/loss is {float(loss)} at epoch {self.current_epoch}; "
                "the learning rate is likely too high: lower model.lr"
            )
        return loss

    def validation_step(self, batch: Data, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Data, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.__dict__["_report"] = None

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")
        self._close_report()

    def _end_epoch(self, stage: str) -> None:
        sums, n = self._sums.pop(stage, (None, 0))
        if sums is None:
            return
        total = torch.cat([sums, sums.new_tensor([n])])
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total.clone(), reduce_op="sum")
        metrics = _means(stage, *total.tolist())
        if self.trainer.state.fn != "fit":
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
            return
        if stage == "val" and not self.trainer.sanity_checking:
            self.val_acc_best = max(self.val_acc_best, float(metrics["val/acc"]))
            metrics["val/acc_best"] = torch.tensor(self.val_acc_best)
        self._publish(metrics)

    @torch.no_grad()
    def score(self, batches: Data | Iterable[Data], stage: str) -> dict[str, float]:
        """``{stage}/loss`` and ``{stage}/acc`` of a batch (or of batches, on the module's
        device) in eval mode, outside a Trainer, with the arithmetic of an epoch's metrics
        (a stacked member is tested this way: its numbers are those ``eval.py`` gets
        from its checkpoint). Under DDP each rank passes its share of the batches and
        the sums are added over the ranks, as at an epoch's end."""
        was_training = self.training
        self.eval()
        try:
            self.__dict__["_report"] = None
            for batch in [batches] if isinstance(batches, Data) else batches:
                self._step(batch, stage)
            sums, n = self._sums.pop(stage, (torch.zeros(2, device=self.device), 0))
            self._close_report()
        finally:
            self.train(was_training)
        total = torch.cat([sums, sums.new_tensor([n])])
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total.clone(), reduce_op="sum")
        return {k: float(v) for k, v in _means(stage, *total.tolist()).items()}

    def _publish(self, metrics: dict[str, Tensor]) -> None:
        """One epoch's metrics to the callbacks and the loggers (see the class doc)."""
        trainer = self.trainer
        trainer.callback_metrics.update(metrics)
        if trainer.sanity_checking or not self.loggers:
            return
        values = {k: float(v) for k, v in metrics.items()}
        values["epoch"] = self.current_epoch
        for logger in self.loggers:
            logger.log_metrics(values, step=self.current_epoch)

    @torch.no_grad()
    def embeddings(self, data: Data) -> Tensor:
        """The hidden node representation :math:`(N, D)` fed to the backbone's last
        layer: ``net.embed`` where the backbone has it, else the input of its last
        module with parameters (captured by a forward hook)."""
        if hasattr(self.net, "embed"):
            return self.net.embed(data.x, data.edge_index)
        owners = [m for m in self.net.modules() if next(m.parameters(False), None) is not None]
        captured: list[Tensor] = []
        hook = owners[-1].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        try:
            self.net(data.x, data.edge_index)
        finally:
            hook.remove()
        return captured[-1]

    @torch.no_grad()
    def attention(self, data: Data) -> list[tuple[Tensor, Tensor]]:
        """Per layer ``(edge_index (2, E'), alpha (E', K))`` from one forward pass, for
        backbones with ``has_attention`` (``forward(..., return_attention=True)``)."""
        if not getattr(self.net, "has_attention", False):
            raise TypeError(f"{type(self.net).__name__} has no attention weights")
        return self.net(data.x, data.edge_index, return_attention=True)[1]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.net)

    def make_optimizer(self, net: nn.Module, **extra: Any) -> torch.optim.Optimizer:
        """The model config's optimizer over ``net``'s parameters (this module's backbone,
        or a stack of its members: elementwise, each member's update is its lone
        update), with the weight-decay scope; ``fused`` where the class takes it (one
        kernel per tensor, and a stack and a lone run round alike); ``extra``: more
        arguments (``capturable``)."""
        hp = self.hparams
        kwargs: dict[str, Any] = {"lr": hp.lr, "weight_decay": hp.weight_decay, **extra}
        if accepts(self.optimizer_class, "fused"):
            kwargs["fused"] = True
        return self.optimizer_class(decay_groups(net, hp.weight_decay_on), **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best
        # RNG states, so that a resumed run draws the same dropout masks as an unbroken one
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
            "python": random.getstate(),
            "dropout": {k: g.get_state() for k, g in self._generators.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.val_acc_best = checkpoint.get("val_acc_best", 0.0)
        rng = checkpoint.get("rng_states")
        if rng and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
            random.setstate(rng["python"])
            self._generators.clear()
            self._generator_states = dict(rng.get("dropout", {}))


def _means(stage: str, loss_sum: float, correct: float, count: float) -> dict[str, Tensor]:
    """An epoch's ``{stage}/loss`` and ``{stage}/acc`` from its sums (0-d tensors)."""
    count = max(count, 1.0)
    return {
        f"{stage}/loss": torch.tensor(loss_sum / count),
        f"{stage}/acc": torch.tensor(correct / count),
    }


def _numpy_state() -> tuple:
    """NumPy's global RNG state with its key array as a tensor (loadable with
    ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached))
