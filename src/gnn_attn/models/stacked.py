"""Stacked members: :math:`S` copies of one backbone, each with its own weights, trained
in one pass that shares the graph work.

Every parameter of the lone backbone gets a leading member axis: the lone parameter
:math:`\\theta` of shape :math:`(\\dots)` becomes :math:`(S, \\dots)`, and member :math:`s`
is the lone backbone with :math:`\\theta = \\theta[s]` (:meth:`StackedNet.member_state_dict`
gives its state dict, loadable into the lone class). What the members share:

- **the first projection**: one sparse product serves every member. Each member drops out
  its own copy of the input (its own mask, as a lone run draws one); the copies are one
  block matrix :math:`(NS, FS)` (:func:`~gnn_attn.models.sparse.project_per_head` with a
  "head" per member); without dropout it is one product :math:`\\mathbf{X}[\\mathbf{W}_1
  \\Vert \\dots \\Vert \\mathbf{W}_S]`;
- **the aggregation**: attention heads of all members are one head axis of :math:`SH`
  heads, aggregated by one sparse product
  (:class:`~gnn_attn.models.attention_ops.AttendAggregate`); GCN's normalised adjacency
  multiplies the :math:`SC` channels of all members at once;
- later projections are one batched product over members (:func:`torch.bmm`).

Adam, L2 weight decay and dropout act elementwise, so a member's optimisation is a lone
run's: with dropout off, member :math:`s` follows the lone run with the same initial
weights to float precision (tested, every backbone, logits and gradients within 1e-5).
What differs: the random stream. A lone run draws its dropout masks from the global
generator one tensor at a time; the stack draws one tensor for all members, so member
:math:`s` gets masks of the same distribution but not the same values as the lone run
with seed :math:`s`.

What stacks here: :class:`~gnn_attn.models.MLP`, :class:`~gnn_attn.models.GCN`,
:class:`~gnn_attn.models.GAT` with ``impl=fused``, without ``residual`` and
``dropout_per_head`` (:func:`why_not_stackable` says why not, in one line). Any other
backbone stacks through ``torch.func`` (:mod:`gnn_attn.models.func_stack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from gnn_attn.models.attention_ops import AttendAggregate, AttentionGraph, dynamic_scores
from gnn_attn.models.cache import GraphCache
from gnn_attn.models.gat_conv import FusedAttentionConv, FusedGATv2Conv
from gnn_attn.models.gcn import CachedGCNConv
from gnn_attn.models.sparse import SparseLinear, dropout, project_per_head
from gnn_attn.models.stack import Hops, LayerStack, Readout, trim


def project_members(h: Tensor, weight: Tensor, p: float, training: bool) -> Tensor:
    r"""Each member's input times its weight, :math:`\mathbf{H}_s\mathbf{W}_s`.

    Either ``h`` is the shared input :math:`(N, F)` (dense or CSR), dropped out here with
    one mask per member, and ``weight`` is :math:`(F, S, P)`; or ``h`` is the members' own
    inputs :math:`(N, S, F)` (already dropped out) and ``weight`` :math:`(S, F, P)`.
    Returns :math:`(N, S, P)`."""
    if h.dim() == 2:  # shared input: a "head" per member, each with its own mask
        _, s, p_out = weight.shape
        return project_per_head(h, weight, s, p, training).view(-1, s, p_out)
    return torch.bmm(h.transpose(0, 1), weight).transpose(0, 1)


class StackedLayer(nn.Module):
    r"""The parameters of :math:`S` lone layers with a member axis.

    A lone parameter ``name`` of shape :math:`(\dots)` is :meth:`param` ``(name)`` of
    shape :math:`(S, \dots)`, except the projection weight (``weight_name``), stored as
    :math:`(S, F, P)` — or :math:`(F, S, P)` in a layer with the shared input
    (``shared_input``), so that one product projects it for all members without a copy.
    Subclasses compute the layer for all members at once: ``forward(h, edge_index, p,
    num_dst)`` with ``h`` the shared input :math:`(N, F)` (``p`` its dropout, drawn per
    member) or :math:`(N, S, F)`; output :math:`(N', S, F')`."""

    weight_name = "weight"
    weight_transposed = False  # the lone weight is (P, F) (a Linear's), not (F, P)

    def __init__(self, layers: Sequence[nn.Module], shared_input: bool) -> None:
        super().__init__()
        self.members = len(layers)
        self.weight_dim = 1 if shared_input else 0  # the member axis of the weight
        self.names = [name for name, _ in layers[0].named_parameters()]
        owned = [dict(layer.named_parameters()) for layer in layers]
        self.stacked = nn.ParameterDict(
            {
                _key(name): nn.Parameter(self._stack(name, [own[name].detach() for own in owned]))
                for name in self.names
            }
        )

    def _stack(self, name: str, values: list[Tensor]) -> Tensor:
        if name != self.weight_name:
            return torch.stack(values)
        if self.weight_transposed:
            values = [v.t() for v in values]
        return torch.stack(values, dim=self.weight_dim).contiguous()

    def param(self, name: str) -> Tensor:
        return self.stacked[_key(name)]

    def member_axes(self) -> list[tuple[Tensor, int]]:
        """Every stacked parameter with the position of its member axis."""
        return [
            (self.param(n), self.weight_dim if n == self.weight_name else 0) for n in self.names
        ]

    def weight(self) -> Tensor:
        """The projection weight, :math:`(F, S, P)` or :math:`(S, F, P)` (see above)."""
        return self.param(self.weight_name)

    def select(self, index: Tensor) -> None:
        """Keep the members at ``index`` (new parameters, in that order)."""
        for name, (p, axis) in zip(self.names, self.member_axes(), strict=True):
            kept = p.detach().index_select(axis, index).contiguous()
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
            value = self.param(name)
            if grad:
                value = value.grad
            elif values is not None:
                value = values[id(value)]
            if name == self.weight_name:
                value = value.select(self.weight_dim, s)
                state[name] = value.t() if self.weight_transposed else value
            else:
                state[name] = value[s]
        return state


def _key(name: str) -> str:
    return name.replace(".", "__")


class StackedLinear(StackedLayer):
    r""":class:`~gnn_attn.models.sparse.SparseLinear` (weight :math:`(F', F)`, bias) per
    member: :math:`\mathbf{H}_s\mathbf{W}_s^\top + \mathbf{b}_s`."""

    weight_transposed = True

    def forward(self, h: Tensor, edge_index: Tensor, p: float, num_dst: int | None) -> Tensor:
        out = project_members(h, self.weight(), p, self.training)
        return out + self.param("bias").unsqueeze(0)


class StackedGCNConv(StackedLayer):
    r""":class:`~gnn_attn.models.gcn.CachedGCNConv` per member,
    :math:`\hat{\mathbf{D}}^{-1/2}\hat{\mathbf{A}}\hat{\mathbf{D}}^{-1/2}\mathbf{H}_s
    \mathbf{W}_s^\top + \mathbf{b}_s`: the normalised adjacency (a CSR matrix, built once
    per graph) multiplies all members' channels :math:`(N, SF')` in one product."""

    weight_name = "lin.weight"
    weight_transposed = True

    def __init__(self, layers: Sequence[nn.Module], shared_input: bool) -> None:
        super().__init__(layers, shared_input)
        self._adjacency: GraphCache[Tensor] = GraphCache()

    def adjacency(self, edge_index: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """The normalised adjacency and its transpose (CSR, ``[target, source]``)."""

        def build() -> tuple[Tensor, Tensor]:
            ei, w = gcn_norm(edge_index, None, n, add_self_loops=True, dtype=torch.float32)
            a = torch.sparse_coo_tensor(ei.flip(0), w, (n, n)).coalesce().to_sparse_csr()
            at = torch.sparse_coo_tensor(ei, w, (n, n)).coalesce().to_sparse_csr()
            return a, at

        return self._adjacency.get(edge_index, (n,), build)

    def forward(self, h: Tensor, edge_index: Tensor, p: float, num_dst: int | None) -> Tensor:
        z = project_members(h, self.weight(), p, self.training)
        n, s, f = z.shape
        out = Propagate.apply(*self.adjacency(edge_index, n), z.reshape(n, s * f))
        return out.view(n, s, f) + self.param("bias").unsqueeze(0)


class Propagate(torch.autograd.Function):
    r""":math:`\mathbf{A}\mathbf{Z}` for a constant CSR :math:`\mathbf{A}` with its
    transpose given (the gradient is :math:`\mathbf{A}^\top\mathbf{G}`, no conversion of
    formats on the way back: nothing syncs with the host, as a CUDA graph needs).

    Shapes: ``a``, ``at`` :math:`(N, N)`, ``z`` :math:`(N, D)` → :math:`(N, D)`."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, at: Tensor, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.at = at
        return a @ z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, ctx.at @ grad.contiguous()


class StackedGATConv(StackedLayer):
    r""":class:`~gnn_attn.models.gat_conv.FusedGATConv` or ``FusedGATv2Conv`` per member:
    the :math:`H` heads of the :math:`S` members are one axis of :math:`SH` heads (head
    :math:`k` of member :math:`s` is head :math:`sH + k`), so scores, softmax, dropout and
    aggregation run once for all (the formulas are the lone layers')."""

    def __init__(self, layers: Sequence[FusedAttentionConv], shared_input: bool) -> None:
        super().__init__(layers, shared_input)
        lone = layers[0]
        self.heads, self.out_channels, self.concat = lone.heads, lone.out_channels, lone.concat
        self.negative_slope, self.attn_dropout = lone.negative_slope, lone.dropout
        self.feat_dropout, self.v2 = lone.feat_dropout, isinstance(lone, FusedGATv2Conv)
        self._graphs: GraphCache[AttentionGraph] = GraphCache()

    def forward(self, h: Tensor, edge_index: Tensor, p: float, num_dst: int | None) -> Tensor:
        s, k, c = self.members, self.members * self.heads, self.out_channels
        n = h.size(0)
        g = self._graphs.get(
            edge_index, (n, num_dst), lambda: AttentionGraph(edge_index, n, num_dst)
        )
        proj = project_members(h, self.weight(), p, self.training)  # (N, S, n·H·C)
        if self.v2:
            proj = proj + self.param("lin_bias").unsqueeze(0)
            hc = self.heads * c
            x_src = proj[..., :hc].reshape(n, k, c)
            x_dst = proj[..., hc:].reshape(n, k * c)
            att = self.param("att").reshape(k, c)
            if torch.is_grad_enabled():
                z = x_src.reshape(n, k * c).index_select(0, g.src) + x_dst.index_select(0, g.dst)
                z = F.leaky_relu(z, self.negative_slope).view(-1, k, c)
                e = (z * att).sum(-1)
            else:  # validation: in cache-sized blocks
                e = dynamic_scores(x_src.reshape(n, k * c), x_dst, att, g, self.negative_slope)
        else:
            x_src = proj.reshape(n, k, c)
            a_src = (x_src * self.param("att_src").reshape(k, c)).sum(-1)  # (N, SH)
            a_dst = (x_src * self.param("att_dst").reshape(k, c)).sum(-1)
            e = a_src.index_select(0, g.src) + a_dst.index_select(0, g.dst)
            e = F.leaky_relu(e, self.negative_slope)
        x_msg = dropout(x_src, self.feat_dropout, self.training)
        out = AttendAggregate.apply(e, x_msg, g.layout(k), self.attn_dropout, self.training)
        if self.concat:
            out = out.reshape(g.num_dst, s, self.heads * c)
        else:
            out = out.view(g.num_dst, s, self.heads, c).mean(dim=2)
        return out + self.param("bias").unsqueeze(0)


STACKED: dict[type, type[StackedLayer]] = {
    SparseLinear: StackedLinear,
    CachedGCNConv: StackedGCNConv,
    **{cls: StackedGATConv for cls in FusedAttentionConv.__subclasses__()},
}


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
        if type(layer) not in STACKED:
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

    Shapes: ``x`` :math:`(N, F_{in})` (dense or CSR, shared by the members),
    ``edge_index`` :math:`(2, E)` → logits :math:`(N, S, C)` (a sampled or receptive-field
    batch with ``hops``: its seeds' rows).
    """

    def __init__(self, members: Sequence[LayerStack]) -> None:
        super().__init__()
        lone = members[0]
        reason = why_not_stackable(lone)
        if reason:
            raise ValueError(reason)
        self.members = len(members)
        self.dropout, self.act, self.trims = lone.dropout, lone.act, lone.trims
        self.layers = nn.ModuleList(
            STACKED[type(group[0])](group, shared_input=i == 0)
            for i, group in enumerate(zip(*(m.layers for m in members), strict=True))
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
            if i == 0:  # the shared input: each member's mask is drawn in the projection
                out = layer(h, edge_index, self.dropout, n_out)
            else:
                out = layer(dropout(h, self.dropout, self.training), edge_index, 0.0, n_out)
            h = out if n_out is None else out[:n_out]
            if i < n_layers - 1:
                h = self.act(h)
        return h

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
        self.members = int(index.numel())

    def member_axes(self) -> list[tuple[Tensor, int]]:
        """Every parameter with the position of its member axis."""
        return [pair for layer in self.layers for pair in layer.member_axes()]
