"""Stacked members: :math:`S` copies of one backbone, each with its own weights, trained
in one pass that shares the graph work — computed by the lone layers' own code.

Every parameter of the lone backbone gets a leading member axis: the lone parameter
:math:`\\theta` of shape :math:`(\\dots)` becomes :math:`(S, \\dots)`, and member :math:`s`
is the lone backbone with :math:`\\theta = \\theta[s]` (:meth:`StackedNet.member_state_dict`
gives its state dict, loadable into the lone class). Nothing of a layer's math is written
here; this module adds only what stacking adds:

- **per member, the lone code with the member's parameters**
  (:func:`torch.func.functional_call`): the projections (a CSR input, the shared first
  one, cannot be batched by ``vmap``; the per-member call is also what makes a member's
  arithmetic its lone run's), a :class:`~gnn_attn.models.sparse.SparseLinear`, the heads'
  combination, each member's bias;
- **once for all members, the lone code on a widened layer**: the attention of the
  :math:`S` members' :math:`H` heads is one layer of :math:`SH` heads
  (:meth:`FusedAttentionConv.widened <gnn_attn.models.gat_conv.FusedAttentionConv.widened>`):
  its own ``scores`` and ``aggregate`` run once (a subclass that changes the score is
  stacked with its change); GCN's propagation (the lone layer's ``propagate``) carries
  the :math:`SC` channels of all members at once.

**The lone rounding.** Where a sum's rounding would depend on how many members lie side
by side, the lone code sums per group of heads or channels (``groups``: the attention
vectors' gradients in :class:`~gnn_attn.models.gat_conv.HeadDot`, GCN's
:class:`~gnn_attn.models.gcn.Propagate`), each member's bias is added on its own
columns, and each member's gradient reaches its lone calls contiguous: a member's logits
and gradients are its lone backbone's bit for bit (tested, every backbone).

**Random streams.** Each member draws its dropout masks from its own generator
(:meth:`NodeClassifier.dropout_generator <gnn_attn.models.NodeClassifier.dropout_generator>`
of its lone run), with the lone shapes and in the lone order: the member's masks are the
lone run's of its seed. With Adam (fused, as the lone run's), L2 weight decay and dropout
elementwise, member :math:`s` is the lone run (tested: ``metrics.json`` equal to the lone
run's with dropout on, every backbone).

What stacks here: :class:`~gnn_attn.models.MLP`, :class:`~gnn_attn.models.GCN`,
:class:`~gnn_attn.models.GAT` with ``impl=fused``, without ``residual`` and
``dropout_per_head`` (:func:`why_not_stackable` says why not, in one line). Any other
backbone stacks through ``torch.func`` (:mod:`gnn_attn.models.func_stack`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gnn_attn.models.attention_ops import AttentionGraph
from gnn_attn.models.cache import GraphCache
from gnn_attn.models.gat_conv import FusedAttentionConv
from gnn_attn.models.gcn import CachedGCNConv
from gnn_attn.models.sparse import SparseLinear, dropout, dropout_stream
from gnn_attn.models.stack import Hops, LayerStack, Readout, trim

Streams = Sequence[torch.Generator | None]  # each member's dropout generator


class _Method(nn.Module):
    """``module.<name>(*args)`` as a forward, so that :func:`functional_call` runs any
    method of a layer with other parameters."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module, self.name = module, name

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.name)(*args)


class StackedLayer(nn.Module):
    r"""The parameters of :math:`S` lone layers with a leading member axis, and the lone
    layer itself (not a submodule: its parameters are not the stack's) to compute with.

    Subclasses compute the layer for all members: ``forward(inputs, edge_index, num_dst,
    streams)`` with ``inputs`` the members' inputs (:math:`S` tensors :math:`(N, F)`,
    dense or CSR, dropped out already) → :math:`(N', S, F')`; ``streams``: the members'
    dropout generators, for dropout inside the layer."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = len(layers)
        self.__dict__["lone"] = weightless(layers[0])  # its code and settings; not a submodule
        self.names = [name for name, _ in layers[0].named_parameters()]
        owned = [dict(layer.named_parameters()) for layer in layers]
        self.stacked = nn.ParameterDict(
            {
                _key(name): nn.Parameter(torch.stack([own[name].detach() for own in owned]))
                for name in self.names
            }
        )
        self._methods: dict[tuple[int, str], _Method] = {}

    def param(self, name: str) -> Tensor:
        r"""The members' ``name`` :math:`(S, \dots)`, each member's in the lone shape."""
        return self.stacked[_key(name)]

    def _apply(self, fn: Any, recurse: bool = True) -> StackedLayer:  # .to(device) & co.
        _apply_to_buffers(self.lone, fn)  # its buffers and caches follow the stack
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> StackedLayer:
        self.lone.train(mode)
        return super().train(mode)

    def call(self, module: nn.Module, method: str, params: dict[str, Tensor], *args: Any) -> Any:
        """``module.<method>(*args)`` with ``params`` (lone names) in place of its own."""
        key = (id(module), method)
        if key not in self._methods:
            self._methods[key] = _Method(module, method)
        named = {f"module.{k}": v for k, v in params.items()}
        return functional_call(self._methods[key], named, args, strict=False)

    def member_params(self, prefix: str = "") -> list[dict[str, Tensor]]:
        """Each member's parameters under the lone names (those under ``prefix``, with it
        removed): views of the stacked ones (:class:`_Unstack`: one backward node gathers
        every member's gradient)."""
        names = [n for n in self.names if n.startswith(prefix)]
        views = [_Unstack.apply(self.param(n)) for n in names]
        return [
            {n.removeprefix(prefix): v[s] for n, v in zip(names, views, strict=True)}
            for s in range(self.members)
        ]

    def per_member(self, method: str, inputs: Sequence[Tensor], prefix: str = "") -> Tensor:
        r"""The lone ``<prefix>.<method>`` of every member on its own input, with its own
        parameters, stacked: :math:`S \times (N, P) \to (N, S, P)`."""
        module = self.lone.get_submodule(prefix.rstrip(".")) if prefix else self.lone
        outs = [
            _ContiguousGrad.apply(self.call(module, method, params, x))
            for params, x in zip(self.member_params(prefix), inputs, strict=True)
        ]
        return torch.stack(outs, dim=1)

    def member_axes(self) -> list[tuple[Tensor, int]]:
        """Every stacked parameter with the position of its member axis (0)."""
        return [(self.stacked[_key(n)], 0) for n in self.names]

    def select(self, index: Tensor) -> None:
        """Keep the members at ``index`` (new parameters, in that order)."""
        for name in self.names:
            kept = self.stacked[_key(name)].detach().index_select(0, index).contiguous()
            self.stacked[_key(name)] = nn.Parameter(kept)
        self.members = int(index.numel())

    def member_state(
        self, s: int, grad: bool = False, values: dict[int, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Member ``s``'s parameters under the lone layer's names and shapes; ``grad``:
        their gradients; ``values``: tensors shaped as the parameters, by ``id`` of the
        parameter (a snapshot of them)."""
        state = {}
        for name in self.names:
            value = self.stacked[_key(name)]
            if grad:
                value = value.grad
            elif values is not None:
                value = values[id(value)]
            state[name] = value[s]
        return state


class _Unstack(torch.autograd.Function):
    r""":meth:`~torch.Tensor.unbind` over the member axis, :math:`(S, \dots) \to S \times
    (\dots)`, whose backward copies each member's gradient into its slot (``unbind``'s own
    backward, one ``torch.stack``, is several times slower on transposed gradients such as
    a CSR projection's :math:`\mathbf{W}^\top`; a member without one gets zeros)."""

    @staticmethod
    def forward(ctx: Any, stacked: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        ctx.layout = stacked.shape, stacked.stride()
        return stacked.unbind(0)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:  # type: ignore[override]
        out = grads[0].new_empty_strided(*ctx.layout)  # the parameter's layout
        for s, grad in enumerate(grads):
            out[s].copy_(grad)
        return out


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose gradient is made contiguous: a member's lone call then gets
    its gradient laid out as in its lone run (a strided one can round differently)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def weightless(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` whose parameters are on the ``meta`` device: its code and
    settings, no weights (a stack passes each call its members' parameters; a call that
    reads a parameter it was not given fails loudly instead of using stale weights)."""
    copy_ = copy.deepcopy(layer)
    for module in copy_.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(p.detach().to("meta"), p.requires_grad)
    return copy_


def _apply_to_buffers(module: nn.Module, fn: Any) -> None:
    for m in module.modules():
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fn(b)


def _key(name: str) -> str:
    return name.replace(".", "__")


class StackedLinear(StackedLayer):
    r""":class:`~gnn_attn.models.sparse.SparseLinear` per member: its own forward,
    :math:`\mathbf{H}_s\mathbf{W}_s^\top + \mathbf{b}_s`."""

    def forward(
        self, inputs: Sequence[Tensor], edge_index: Tensor, num_dst: int | None, streams: Streams
    ) -> Tensor:
        return self.per_member("forward", inputs)


class StackedGCNConv(StackedLayer):
    r""":class:`~gnn_attn.models.gcn.CachedGCNConv` per member: its ``lin`` per member,
    then one call of its ``propagate`` with the lone normalisation
    :math:`\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}` on all
    members' channels :math:`(N, SF')`, plus each member's bias."""

    def forward(
        self, inputs: Sequence[Tensor], edge_index: Tensor, num_dst: int | None, streams: Streams
    ) -> Tensor:
        lone: CachedGCNConv = self.lone  # type: ignore[assignment]
        z = self.per_member("forward", inputs, prefix="lin.")  # (N, S, F')
        n, s, f = z.shape
        lone.groups = s  # each member's channels propagate as in its lone layer
        adj = lone.normalized(edge_index, n)
        out = lone.propagate(adj, x=z.reshape(n, s * f), edge_weight=None)
        # each member's bias on its own columns (its gradient sums as in the lone layer)
        members = zip(out.view(n, s, f).unbind(1), self.param("bias").unbind(0), strict=True)
        return torch.stack([o + b for o, b in members], dim=1)


class StackedGATConv(StackedLayer):
    r""":class:`~gnn_attn.models.gat_conv.FusedGATConv` or ``FusedGATv2Conv`` (or a
    subclass) per member. The projections are the lone ``project`` per member; the
    :math:`H` heads of the :math:`S` members are then the :math:`SH` heads of the lone
    layer's :meth:`~gnn_attn.models.gat_conv.FusedAttentionConv.widened` copy (head
    :math:`k` of member :math:`s` is head :math:`sH + k`), whose own ``scores`` and
    ``aggregate`` run once for all; each member's dropout masks are drawn by the lone
    ``dropout_scales`` from its own stream and laid out in the widened order; the lone
    ``combine`` gives each member's output."""

    def __init__(self, layers: Sequence[FusedAttentionConv]) -> None:
        super().__init__(layers)
        self.__dict__["wide"] = weightless(layers[0].widened(len(layers)))
        self.__dict__["wide_size"] = len(layers)
        self._orders: GraphCache[Tensor] = GraphCache()

    def _wide(self, device: torch.device) -> FusedAttentionConv:
        """The widened lone layer for the current member count, on ``device``."""
        if self.wide_size != self.members:  # the stack shrank
            self.__dict__["wide"] = weightless(self.lone.widened(self.members))
            self.__dict__["wide_size"] = self.members
        wide: FusedAttentionConv = self.wide
        _apply_to_buffers(wide, lambda t: t.to(device))  # a subclass's buffers, if any
        wide.train(self.training)
        return wide

    def _wide_order(self, g: AttentionGraph, heads: int) -> Tensor:
        r"""Where the lone layout's attention entries of each member go in the widened
        layout: entry :math:`q` of member :math:`s` (target :math:`i`, head :math:`k`,
        source :math:`j`: lone position :math:`H p_i + k d_i + r_j`) is at
        :math:`q + (S-1) H p_i + s H d_i` (:math:`p_i` the CSR offset of target
        :math:`i`, :math:`d_i` its in-degree). Returned inverted, as the gather that builds
        the widened layout from the members' lone ones concatenated: :math:`(S \cdot E'H)`
        (``int32`` where it fits: a quicker gather)."""

        def build() -> Tensor:
            lone = g.layout(heads)
            target = torch.div(lone.row, heads, rounding_mode="floor")
            start, deg = g.ptr.index_select(0, target), g.ptr.diff().index_select(0, target)
            q = torch.arange(lone.row.numel(), device=lone.row.device)
            s = torch.arange(self.members, device=q.device).view(-1, 1)
            base = q + (self.members - 1) * heads * start
            order = (base + s * heads * deg).reshape(-1)
            gather = torch.empty_like(order)
            gather[order] = torch.arange(order.numel(), device=order.device)
            return gather.int() if order.numel() < 2**31 else gather

        return self._orders.get(g.src, (self.members, heads), build)

    def forward(
        self, inputs: Sequence[Tensor], edge_index: Tensor, num_dst: int | None, streams: Streams
    ) -> Tensor:
        lone: FusedAttentionConv = self.lone  # type: ignore[assignment]
        s, h, c = self.members, lone.heads, lone.out_channels
        n = inputs[0].size(0)
        g = lone.graph(edge_index, n, num_dst)
        wide = self._wide(inputs[0].device)
        proj = self.per_member("project", inputs)  # (N, S, n·H·C), each the lone layout
        n_proj = proj.size(-1) // (h * c)
        proj = proj.view(n, s, n_proj, h * c).transpose(1, 2).reshape(n, n_proj * s * h * c)
        params = {
            name: lone.widen_parameter(name, self.param(name))
            for name in self.names
            if name not in ("weight", "bias")
        }
        e, x_src = self.call(wide, "scores", params, proj, g)  # (E', SH), (N, SH, C)
        scales = self._member_scales(lone, g, (n, h, c), streams)
        out = wide.aggregate(e, x_src, g, scales)  # (N_d, SH, C)
        out = out.view(g.num_dst, s, h, c)

        members = zip(out.unbind(1), self.param("bias").unbind(0), strict=True)
        outs = [
            _ContiguousGrad.apply(self.call(lone, "combine", {"bias": b}, o.contiguous()))
            for o, b in members
        ]
        return torch.stack(outs, dim=1)

    def _member_scales(
        self,
        lone: FusedAttentionConv,
        g: AttentionGraph,
        x_shape: tuple[int, int, int],
        streams: Streams,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Each member's lone dropout (:meth:`dropout_scales`, from its own stream), in
        the widened layout: features :math:`(N, SH, C)`, attention in the widened CSR
        order."""
        if not self.training:
            return None, None
        layout = g.layout(lone.heads)
        feats, attns = [], []
        for stream in streams:
            with dropout_stream(stream):
                feat, attn = lone.dropout_scales(torch.Size(x_shape), layout)
            feats.append(feat)
            attns.append(attn)
        n, h, c = x_shape
        feat = None if feats[0] is None else torch.stack(feats, 1).view(n, -1, c)
        attn = None
        if attns[0] is not None:
            attn = torch.cat(attns).index_select(0, self._wide_order(g, h))
        return feat, attn


STACKED: dict[type, type[StackedLayer]] = {  # a lone layer (or a subclass) → its stack
    SparseLinear: StackedLinear,
    CachedGCNConv: StackedGCNConv,
    FusedAttentionConv: StackedGATConv,
}


def stacked_class(layer: nn.Module) -> type[StackedLayer] | None:
    """The :class:`StackedLayer` of a lone layer (of its class or a base), if any."""
    for base, stacked in STACKED.items():
        if isinstance(layer, base):
            return stacked
    return None


def why_not_stackable(net: nn.Module) -> str | None:
    """``None`` if :class:`StackedNet` can stack copies of ``net``, else the reason."""
    name = type(net).__name__
    if not isinstance(net, LayerStack):
        return f"{name} is not one of the template's backbones (MLP, GCN, GAT)"
    if net.residual:
        return f"{name} with residual=true does not stack"
    for layer in net.layers:
        if isinstance(layer, Readout):
            return f"{name} with a linear read-out does not stack"
        if stacked_class(layer) is None:
            return f"{name}'s layer {type(layer).__name__} does not stack (GAT needs impl=fused)"
        if getattr(layer, "input_dropout", 0.0) > 0:
            return f"{name} with dropout_per_head=true does not stack"
    return None


class StackedNet(nn.Module):
    r""":math:`S` members of one :class:`~gnn_attn.models.stack.LayerStack` backbone,
    computed together (see the module doc); the wiring is the lone stack's:

    .. math::
        \mathbf{H}^{(l+1)}_s = \sigma\big(f_l(\mathrm{drop}_p(\mathbf{H}^{(l)}_s),
        \mathcal{E};\ \theta_{l,s})\big),\qquad s = 1..S

    Args:
        members: the lone backbones, all of one class and one configuration (different
            weights); their weights are copied in.
        streams: each member's dropout generator (its lone run's,
            :meth:`~gnn_attn.models.NodeClassifier.dropout_generator`); ``None``: all
            draw from the global generator, member after member.

    Shapes: ``x`` :math:`(N, F_{in})` (dense or CSR, shared by the members),
    ``edge_index`` :math:`(2, E)` → logits :math:`(N, S, C)` (a sampled or receptive-field
    batch with ``hops``: its seeds' rows).
    """

    def __init__(self, members: Sequence[LayerStack], streams: Streams | None = None) -> None:
        super().__init__()
        lone = members[0]
        reason = why_not_stackable(lone)
        if reason:
            raise ValueError(reason)
        self.members = len(members)
        self.dropout, self.act, self.trims = lone.dropout, lone.act, lone.trims
        self.streams: list[torch.Generator | None] = list(streams or [None] * len(members))
        self.layers = nn.ModuleList(
            stacked_class(group[0])(group)  # type: ignore[misc]
            for group in zip(*(m.layers for m in members), strict=True)
        )
        self._prefixes = [f"layers.{i}." for i in range(len(self.layers))]
        self._template = {k: v.detach().clone() for k, v in lone.state_dict().items()}

    def forward(self, x: Tensor, edge_index: Tensor, hops: Hops | None = None) -> Tensor:
        """Logits of every member; with ``hops`` (nodes and edges per hop of a
        seeds-first batch) each layer computes only what later layers read, as
        :meth:`LayerStack._run <gnn_attn.models.stack.LayerStack._run>` does."""
        n_layers = len(self.layers)
        h = x
        for i, layer in enumerate(self.layers):
            n_out = None
            if hops is not None and self.trims:
                n_out, edge_index = trim(hops, i, n_layers, edge_index)
            # each member's input: its own dropout mask of the shared input, or of its own
            inputs = [self._input(h if i == 0 else h[:, s], s) for s in range(self.members)]
            out = layer(inputs, edge_index, n_out, self.streams)
            h = out if n_out is None else out[:n_out]
            if i < n_layers - 1:
                h = self.act(h)
        return h

    def _input(self, h: Tensor, s: int) -> Tensor:
        """Member ``s``'s dropout of ``h`` (:math:`(N, F)`), from its own stream."""
        with dropout_stream(self.streams[s]):
            out = dropout(h, self.dropout, self.training)
        return out if out.layout != torch.strided else out.contiguous()

    def member_state_dict(self, s: int, values: dict[int, Tensor] | None = None) -> dict[str, Any]:
        """Member ``s`` as a state dict of the lone backbone (buffers from the first
        member), on the CPU; ``values``: tensors to read instead of the parameters, by
        ``id`` of the parameter (see :meth:`StackedLayer.member_state`)."""
        state = dict(self._template)
        for prefix, layer in zip(self._prefixes, self.layers, strict=True):
            for name, value in layer.member_state(s, values=values).items():
                state[prefix + name] = value.detach().cpu().clone()
        return state

    def select(self, index: Tensor) -> None:
        """Keep the members at positions ``index`` (a 1-d device tensor), in that order:
        every parameter is replaced by a smaller one."""
        for layer in self.layers:
            layer.select(index)
        self.streams = [self.streams[i] for i in index.tolist()]
        self.members = int(index.numel())

    def member_axes(self) -> list[tuple[Tensor, int]]:
        """Every parameter with the position of its member axis."""
        return [pair for layer in self.layers for pair in layer.member_axes()]
