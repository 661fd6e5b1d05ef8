r"""Any backbone as a stack of :math:`S` members, derived from its own ``forward`` by
``torch.func``: nothing of the backbone is written again.

The members' parameters are stacked along a leading member axis
(:func:`torch.func.stack_module_state`): the lone parameter :math:`\theta` of shape
:math:`(\dots)` becomes :math:`(S, \dots)`. The stack's forward is the lone module's
forward on each member's slice, batched by :func:`torch.func.vmap` over that axis
(``randomness="different"``: each member draws its own dropout masks):

.. math::
    \mathbf{Z}_{:, s} = f(\mathbf{X}, \mathcal{E};\ \theta_s),\qquad s = 1..S

so an edit to the backbone (a layer's score, its propagation) reaches the stack as it is.
Adam, weight decay and dropout act elementwise, so each member trains as its lone run
does: with dropout off, to float precision (tested on PyG ``SAGEConv`` and ``GINConv``
backbones). With dropout on, a member's masks come from the shared generator, so it
matches the lone run in distribution, not draw for draw.

What cannot be stacked this way is found before training by :func:`probe`, which
names it, and the jobs then run one at a time: an operation ``torch.func`` cannot batch
(an in-place write into a tensor made without the member axis, ``torch.sparse.mm``, an
old-style ``autograd.Function``, a shape that depends on random draws in training, as
``dropout_edge``), buffers that change as the model trains (BatchNorm's running
statistics: a stack would not select them with the weights), and modules that cannot be
stacked at all (lazy layers of unknown size, tied weights).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from gnn_attn.models.module import first_layer


class FunctionalStack(nn.Module):
    r""":math:`S` members of one backbone class, each with its own weights.

    ``stacked`` is a copy of the lone module whose parameters and buffers carry the member
    axis (its names are the lone names: weight-decay scopes and state dicts read as the
    lone module's); the forward calls the lone module's code through
    :func:`torch.func.functional_call` on a weightless (``meta``) copy.

    Args:
        members: the lone backbones, one class and one configuration, different weights.

    Shapes: ``x`` :math:`(N, F)` (dense), ``edge_index`` :math:`(2, E)` → logits
    :math:`(N, S, C)`.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        lone = members[0]
        params, buffers = stack_module_state(list(members))
        self.stacked = copy.deepcopy(lone)
        persistent = set(lone.state_dict())
        for name, value in {**params, **buffers}.items():
            _put(self.stacked, name, value.detach(), name in params, name in persistent)
        self._skeleton = [copy.deepcopy(lone).to("meta")]  # code only, not a submodule
        self._template = {k: v.detach().cpu().clone() for k, v in lone.state_dict().items()}
        self.members = len(members)

    @property
    def first_layer(self) -> nn.Module:
        """The lone backbone's first layer (:func:`~gnn_attn.models.module.first_layer`),
        its parameters with the member axis."""
        return first_layer(self.stacked)

    def forward(self, x: Tensor, edge_index: Tensor, hops: Any = None) -> Tensor:
        """Every member's logits, :math:`(N, S, C)` (``hops`` is not used: a backbone
        of any kind computes the whole graph)."""
        skeleton = self._skeleton[0]
        skeleton.train(self.training)
        params = dict(self.stacked.named_parameters())
        buffers = dict(self.stacked.named_buffers())

        def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
            return functional_call(skeleton, (p, b), (x, edge_index))

        return vmap(one, randomness="different")(params, buffers).transpose(0, 1)

    def member_axes(self) -> list[tuple[Tensor, int]]:
        """Every parameter with the position of its member axis (the first)."""
        return [(p, 0) for p in self.stacked.parameters()]

    def member_state_dict(self, s: int, values: dict[int, Tensor] | None = None) -> dict[str, Any]:
        """Member ``s`` as a state dict of the lone backbone, on the CPU; ``values``:
        tensors to read instead of the parameters, by ``id`` of the parameter."""
        state = dict(self._template)
        for name, p in self.stacked.named_parameters():
            value = values[id(p)] if values is not None else p
            state[name] = value[s].detach().cpu().clone()
        for name, b in self.stacked.named_buffers():
            if name in state:  # persistent ones (the probe refused buffers that train)
                state[name] = b[s].detach().cpu().clone()
        return state

    def select(self, index: Tensor) -> None:
        """Keep the members at positions ``index``, in that order (new parameters)."""
        persistent = set(self._template)
        for name, p in list(self.stacked.named_parameters()):
            _put(self.stacked, name, p.detach().index_select(0, index).contiguous(), True)
        for name, b in list(self.stacked.named_buffers()):
            kept = b.index_select(0, index).contiguous()
            _put(self.stacked, name, kept, False, name in persistent)
        self.members = int(index.numel())


def _put(
    root: nn.Module, name: str, value: Tensor, parameter: bool, persistent: bool = True
) -> None:
    """Set the parameter (or buffer) ``name`` of ``root`` to ``value``."""
    path, _, leaf = name.rpartition(".")
    owner = root.get_submodule(path) if path else root
    if parameter:
        owner.register_parameter(leaf, nn.Parameter(value))
    else:
        owner.register_buffer(leaf, value, persistent=persistent)


def stack_or_reason(members: Sequence[nn.Module]) -> FunctionalStack | str:
    """The members as a :class:`FunctionalStack`, or why they cannot be one (a lazy
    layer of unknown size, tied weights, ...), in one line."""
    try:
        stack = FunctionalStack(members)
    except Exception as err:
        return f"torch.func cannot stack it ({type(err).__name__}: {_short(err)})"
    lone = {n for n, _ in members[0].named_parameters(remove_duplicate=False)}
    if len(lone) != len(list(stack.stacked.parameters())):
        return "torch.func cannot stack it (it ties weights: one parameter under two names)"
    return stack


def probe(stack: FunctionalStack, x: Tensor, edge_index: Tensor) -> str | None:
    """``None`` if the stack's forward and backward batch over the members, in eval and
    in training mode, with its buffers unchanged by a training step; else why not, in
    one line naming the failing operation. Nothing is left behind: the random
    generators' states, the buffers, the gradients and the mode are restored."""
    was_training = stack.training
    buffers = {n: b.clone() for n, b in stack.stacked.named_buffers()}
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for training in (False, True):
                stack.train(training)
                stack(x, edge_index).sum().backward()
        changed = [n for n, b in stack.stacked.named_buffers() if not torch.equal(b, buffers[n])]
        if changed:
            return (
                f"its buffer {changed[0]} changes as it trains (running statistics): a "
                "stack would not select it with the weights"
            )
    except Exception as err:  # a batching rule torch.func lacks, an in-place write, ...
        return f"torch.func cannot stack it ({type(err).__name__}: {_short(err)})"
    finally:
        for name, b in stack.stacked.named_buffers():
            b.copy_(buffers[name])
        stack.zero_grad(set_to_none=True)
        stack.train(was_training)
    return None


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]
