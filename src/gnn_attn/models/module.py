"""The LightningModule that trains any backbone for transductive node classification."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn_attn.data.sampler import receptive_field
from gnn_attn.errors import TrainingDiverged, UserError

DECAY_SCOPES = ("all", "weights", "first_layer")


class NodeClassifier(L.LightningModule):
    r"""Cross-entropy node classification, full-batch or on sampled mini-batches.

    A batch is the whole graph (the loss and the metrics use the nodes of the stage's
    mask: ``train_mask``, ``val_mask``, ``test_mask``) or a sampled mini-batch (they use
    its seed nodes, the first ``batch.batch_size`` rows). With :math:`\mathcal{V}_s` those
    nodes,

    .. math::
        \mathcal{L} = -\frac{1}{|\mathcal{V}_s|}\sum_{i \in \mathcal{V}_s}
        \log \mathrm{softmax}(f_\theta(\mathbf{X}, \mathcal{E})_i)_{y_i}

    Full batch with a backbone that trims exactly (GAT, GATv2, MLP), each stage runs on
    its receptive field instead of the whole graph: the stage's nodes and every node
    within the backbone's hops of them, built once (:meth:`_receptive`); the logits of
    the stage's nodes, the loss and the gradients are the same, the work is not (GCN's
    symmetric normalisation depends on every degree, so it keeps the whole graph).

    Logged once per epoch: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``val/acc_best`` (the best ``val/acc`` so far), ``test/loss``, ``test/acc``. The epoch
    values are exact means over every scored node: each batch adds its loss sum, correct
    count and node count; at the epoch's end they are summed over ranks (DDP) and divided.

    During ``fit`` the epoch metrics skip Lightning's result collection (built to average
    per-step values; it costs ~0.8 ms per ``self.log`` call on a CPU, more than a full-batch
    GAT step): they go straight into ``trainer.callback_metrics`` (read by early stopping
    and the progress bar) and to every logger's ``log_metrics`` with ``step`` = epoch.
    ``validate``/``test`` use ``self.log`` as usual, so their return values are complete.

    Args:
        net: a callable ``net(in_channels=F, out_channels=C)`` returning the backbone (a
            Hydra ``_partial_`` of :class:`~gnn_attn.models.GAT`, ``GCN`` or ``MLP``).
        optimizer: a callable ``optimizer(params) -> torch.optim.Optimizer`` (``_partial_``).
        in_channels: input features :math:`F`.
        num_classes: classes :math:`C`.
        weight_decay_on: which parameters the optimizer's weight decay applies to: ``all``
            (what the official GAT code does); ``weights`` (not biases); ``first_layer``
            (as in the GCN paper).
    """

    def __init__(
        self,
        net: Callable[..., nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        in_channels: int,
        num_classes: int,
        weight_decay_on: str = "all",
    ) -> None:
        super().__init__()
        if weight_decay_on not in DECAY_SCOPES:
            raise UserError(
                f"model.weight_decay_on must be one of {', '.join(DECAY_SCOPES)} "
                f"(got '{weight_decay_on}')"
            )
        self.net = net(in_channels=in_channels, out_channels=num_classes)
        self.optimizer_factory = optimizer
        self.weight_decay_on = weight_decay_on
        self.num_classes = num_classes
        self.val_acc_best = 0.0
        # Stored in every checkpoint so that eval.py can rebuild the run.
        self.run_config: dict[str, Any] | None = None
        self._train_start: float | None = None
        self.train_seconds = 0.0
        # per stage: (sum of losses × nodes, correct) and the node count of this epoch
        self._sums: dict[str, tuple[Tensor, int]] = {}
        self._fields: dict[tuple[str, int], tuple[Data, Data]] = {}

    # Wall time of the epoch loop alone (no setup, no pictures drawn at fit start).
    def on_train_start(self) -> None:
        self._sums.clear()
        self._train_start = time.perf_counter()

    def on_train_end(self) -> None:
        if self._train_start is not None:
            self.train_seconds = time.perf_counter() - self._train_start

    def forward(self, data: Data) -> Tensor:
        """Logits :math:`(N, C)` for every node (a sampled batch: its seeds first)."""
        if "num_sampled_nodes" in data:
            hops = (data.num_sampled_nodes, data.num_sampled_edges)
            return self.net(data.x, data.edge_index, hops)
        return self.net(data.x, data.edge_index)

    def _receptive(self, data: Data, stage: str) -> Data:
        """The stage's nodes of the whole graph ``data`` with their complete
        :math:`L`-hop in-neighbourhood, as one batch (built once per graph and stage).

        Only these nodes can influence the stage's logits, so for backbones whose layers
        trim exactly (GAT, GATv2, MLP: ``net.trims``) this batch gives the same loss and
        gradients as the whole graph, at a fraction of the work (CiteSeer's 120 training
        nodes: layer 2 computes 120 rows instead of 3327)."""
        key = (stage, id(data))
        hit = self._fields.get(key)
        if hit is None or hit[0] is not data:
            seeds = data[f"{stage}_mask"].nonzero().view(-1)
            self._fields[key] = (data, receptive_field(data, seeds, self.net.receptive_hops))
        return self._fields[key][1]

    def _step(self, batch: Data, stage: str) -> Tensor:
        """Loss on the stage's nodes of one batch; adds its sums to the epoch's."""
        if "batch_size" not in batch and getattr(self.net, "trims", False):
            batch = self._receptive(batch, stage)
        logits = self(batch)
        if "batch_size" in batch:  # a sampled mini-batch: its seeds come first
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
        return loss

    def _epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """The epoch's mean loss and accuracy over every node it scored, summed over
        batches and, under DDP, over ranks."""
        sums, n = self._sums.pop(stage, (None, 0))
        if sums is None:
            return {}
        total = torch.cat([sums, sums.new_tensor([n])])
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total.clone(), reduce_op="sum")
        loss_sum, correct, count = total.tolist()
        count = max(count, 1.0)
        return {
            f"{stage}/loss": torch.tensor(loss_sum / count),
            f"{stage}/acc": torch.tensor(correct / count),
        }

    def _end_epoch(self, stage: str) -> None:
        metrics = self._epoch_metrics(stage)
        if not metrics:
            return
        if self.trainer.state.fn != "fit":
            self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
            return
        if stage == "val" and not self.trainer.sanity_checking:
            self.val_acc_best = max(self.val_acc_best, float(metrics["val/acc"]))
            metrics["val/acc_best"] = torch.tensor(self.val_acc_best)
        self._publish(metrics)

    def _publish(self, metrics: dict[str, Tensor]) -> None:
        """Give one epoch's metrics to the callbacks and the loggers (see class doc)."""
        trainer = self.trainer
        trainer.callback_metrics.update(metrics)
        if trainer.sanity_checking or not self.loggers:
            return
        values = {k: float(v) for k, v in metrics.items()}
        values["epoch"] = self.current_epoch
        for logger in self.loggers:
            logger.log_metrics(values, step=self.current_epoch)

    def training_step(self, batch: Data, batch_idx: int) -> Tensor:
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

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")

    @torch.no_grad()
    def embeddings(self, data: Data) -> Tensor:
        """Hidden node representation :math:`(N, F_{L-1})` fed to the output layer."""
        return self.net.embed(data.x, data.edge_index)

    def attention(self, data: Data) -> list[tuple[Tensor, Tensor]]:
        """Per layer ``(edge_index (2, E'), alpha (E', K))``; GAT backbones only."""
        if not hasattr(self.net, "attention"):
            raise TypeError(f"{type(self.net).__name__} has no attention weights")
        return self.net.attention(data.x, data.edge_index)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.net.named_parameters())
        if self.weight_decay_on == "all":
            return self.optimizer_factory(self.net.parameters())
        if self.weight_decay_on == "weights":
            decay = [p for n, p in params if not n.endswith("bias")]
        else:
            decay = list(self.net.first_layer.parameters())
        ids = {id(p) for p in decay}
        rest = [p for _, p in params if id(p) not in ids]
        return self.optimizer_factory([{"params": decay}, {"params": rest, "weight_decay": 0.0}])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["val_acc_best"] = self.val_acc_best
        # RNG states, so that a resumed run draws the same dropout masks as an unbroken one
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(),
            "python": random.getstate(),
        }
        if self.run_config is not None:
            checkpoint["gnn_attn_config"] = self.run_config

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


def _numpy_state() -> tuple:
    """NumPy's global RNG state with its key array as a tensor (loadable with
    ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached))
