"""The LightningModule that trains any backbone for transductive node classification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from gnn_attn.errors import UserError

DECAY_SCOPES = ("all", "weights", "first_layer")


class NodeClassifier(L.LightningModule):
    r"""Cross-entropy node classification on the split masks of one full graph.

    Every step sees the whole graph; the loss and the metrics use only the nodes of the
    stage's mask (``train_mask``, ``val_mask``, ``test_mask``):

    .. math::
        \mathcal{L} = -\frac{1}{|\mathcal{V}_s|}\sum_{i \in \mathcal{V}_s}
        \log \mathrm{softmax}(f_\theta(\mathbf{X}, \mathcal{E})_i)_{y_i}

    Logged: ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``
    (the best ``val/acc`` so far), ``test/loss``, ``test/acc``.

    Args:
        net: a callable ``net(in_channels=F, out_channels=C)`` returning the backbone (a
            Hydra ``_partial_`` of :class:`~gnn_attn.models.GAT`, ``GCN`` or ``MLP``).
        optimizer: a callable ``optimizer(params) -> torch.optim.Optimizer`` (``_partial_``).
        in_channels: input features :math:`F`.
        num_classes: classes :math:`C`.
        weight_decay_on: which parameters the optimizer's weight decay applies to: ``all``;
            ``weights`` (not biases, as in the official GAT code); ``first_layer`` (as in
            the GCN paper).
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
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        # Stored in every checkpoint so that eval.py can rebuild the run.
        self.run_config: dict[str, Any] | None = None

    def forward(self, data: Data) -> Tensor:
        """Logits :math:`(N, C)` for every node."""
        return self.net(data.x, data.edge_index)

    def _step(self, data: Data, stage: str, acc: MulticlassAccuracy) -> Tensor:
        mask = data[f"{stage}_mask"]
        logits = self(data)[mask]
        y = data.y[mask]
        loss = F.cross_entropy(logits, y)
        acc(logits.detach(), y)
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=1)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, batch_size=1)
        return loss

    def training_step(self, data: Data, batch_idx: int) -> Tensor:
        return self._step(data, "train", self.train_acc)

    def validation_step(self, data: Data, batch_idx: int) -> None:
        self._step(data, "val", self.val_acc)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), batch_size=1)

    def test_step(self, data: Data, batch_idx: int) -> None:
        self._step(data, "test", self.test_acc)

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
        if self.run_config is not None:
            checkpoint["gnn_attn_config"] = self.run_config
