"""Sparse bag-of-words inputs: dropout on stored values and a CSR first projection.

Planetoid features are ~1 % non-zero. Dense dropout over a :math:`(N, F)` feature matrix
draws :math:`NF` random numbers (12 M for CiteSeer) to zero entries that are mostly zero
already; dropout on the stored values of a CSR matrix has exactly the same distribution
(a dropped zero stays zero) at ~1 % of the cost.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import Linear

from gnn_attn.models.cache import GraphCache


def is_csr(x: Tensor) -> bool:
    return x.layout == torch.sparse_csr


_STREAM: list[torch.Generator] = []  # the generator dropout draws from (innermost last)


@contextlib.contextmanager
def dropout_stream(generator: torch.Generator | None) -> Iterator[None]:
    """Draw every mask of :func:`keep_mask` (so every dropout of the template's layers)
    from ``generator`` inside the block; ``None``: the global generator.

    A run's dropout masks then depend on its own generator alone, not on what else draws
    from the global one (data loaders, pictures): the member of a stack that draws from
    a copy of it gets the lone run's masks (:class:`~gnn_attn.models.NodeClassifier`
    owns one per run)."""
    if generator is None:
        yield
        return
    _STREAM.append(generator)
    try:
        yield
    finally:
        _STREAM.pop()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    r"""Boolean mask, each entry true with probability :math:`1 - p'`,
    :math:`p' = \mathrm{round}(2^{16} p) / 2^{16}` (:math:`|p' - p| \le 8 \cdot 10^{-6}`),
    drawn from the generator of :func:`dropout_stream` (else the global one).

    Draws 16 random bits per entry, four entries per 64-bit random number: ~4× fewer
    generator calls than ``rand``/``bernoulli_`` (which dominate dropout on the CPU).
    """
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    generator = _STREAM[-1] if _STREAM else None
    bits = bits.random_(-(2**63), 2**63 - 1, generator=generator).view(torch.int16)[:n].view(shape)
    return bits >= round(p * 65536) - 32768


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    r"""Inverted dropout, :math:`x_k m_k / (1 - p')` with :math:`m_k \sim
    \mathrm{Bernoulli}(1 - p')` (see :func:`keep_mask`), unbiased: :math:`E = x`.
    On a CSR tensor only the stored values are dropped (a dropped zero stays zero).

    Returns ``x`` itself when not training or :math:`p = 0`.
    """
    if not training or p == 0.0:
        return x
    if is_csr(x):
        values = dropout(x.values(), p, training)
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), values, x.shape, check_invariants=False
        )
    return x * dropout_scale(x.shape, p, x.device)


def dropout_scale(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    r"""What inverted dropout multiplies by: :math:`m_k / (1 - p')` (:func:`keep_mask`),
    a float tensor of ``shape``."""
    drop = round(p * 65536)
    if drop >= 65536:
        return torch.zeros(shape, device=device)
    return keep_mask(shape, p, device) * (65536 / (65536 - drop))


class _Transpose:
    """CSR structure of :math:`X^\\top` and the permutation of :math:`X`'s stored values."""

    def __init__(self, x: Tensor) -> None:
        n_rows, n_cols = x.shape
        crow, col = x.crow_indices(), x.col_indices()
        row = torch.repeat_interleave(torch.arange(n_rows, device=x.device), crow.diff())
        self.perm = torch.argsort(col, stable=True)  # rows stay ascending within a column
        self.col = row[self.perm].contiguous()
        counts = torch.bincount(col, minlength=n_cols)
        self.offsets = torch.zeros(n_cols, dtype=crow.dtype, device=x.device)
        self.offsets[1:] = counts.cumsum(0)[:-1]


_TRANSPOSES: GraphCache[_Transpose] = GraphCache()


def _transpose_of(x: Tensor) -> _Transpose:
    """The :class:`_Transpose` of ``x``'s structure, computed once per structure (dropout
    changes only the values; the key is the column indices, the row offsets go along)."""
    crow, col = x.crow_indices(), x.col_indices()
    return _TRANSPOSES.get(col, (crow.data_ptr(), tuple(x.shape)), lambda: _Transpose(x))


def _bag_matmul(col: Tensor, offsets: Tensor, values: Tensor, dense: Tensor) -> Tensor:
    """Rows of a CSR matrix times ``dense``: each output row is the value-weighted sum of
    the ``dense`` rows its stored columns name (``embedding_bag``, ~4× faster on the CPU
    than the CSR ``mm`` kernel)."""
    return F.embedding_bag(col, dense, offsets, mode="sum", per_sample_weights=values)


class _CSRProject(torch.autograd.Function):
    """:math:`Y = XW` for a constant CSR :math:`X` :math:`(N, F)` and a dense :math:`W`
    :math:`(F, P)`; the gradient :math:`X^\\top G` uses a transposed structure computed
    once per feature matrix. No gradient flows to :math:`X` (it is data)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        values = x.values()
        ctx.save_for_backward(values)
        ctx.transpose = _transpose_of(x)
        crow = x.crow_indices()
        return _bag_matmul(x.col_indices(), crow[:-1], values, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        (values,) = ctx.saved_tensors
        t: _Transpose = ctx.transpose
        return None, _bag_matmul(t.col, t.offsets, values[t.perm], grad.contiguous())


def project(x: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\mathbf{X}\mathbf{W}` for a dense or CSR :math:`\mathbf{X}` :math:`(N, F)` and
    :math:`\mathbf{W}` :math:`(F, P)` → :math:`(N, P)`."""
    if is_csr(x):
        return _CSRProject.apply(x, weight.contiguous())
    return x @ weight


class _HeadCopies:
    """Structure of :func:`head_copies`' output for one CSR structure and head count."""

    def __init__(self, x: Tensor, heads: int) -> None:
        n, f = x.shape
        crow, col = x.crow_indices(), x.col_indices()
        counts = crow.diff()
        # entry order (row, head, stored entry of the row): row i's entries once per head
        row_start = crow[:-1].repeat_interleave(counts * heads)
        exp_start = (crow[:-1] * heads).repeat_interleave(counts * heads)
        rank = torch.arange(exp_start.numel(), device=x.device) - exp_start
        size = counts.repeat_interleave(counts * heads)
        k = torch.div(rank, size, rounding_mode="floor")
        self.source = row_start + rank - k * size  # position in x.values()
        self.col = (col.index_select(0, self.source) * heads + k).contiguous()
        self.crow = torch.zeros(n * heads + 1, dtype=crow.dtype, device=x.device)
        self.crow[1:] = counts.repeat_interleave(heads).cumsum(0)
        self.shape = (n * heads, f * heads)


_HEAD_COPIES: GraphCache[_HeadCopies] = GraphCache()


def head_copies(x: Tensor, heads: int) -> Tensor:
    r"""One copy of a CSR :math:`\mathbf{X}` :math:`(N, F)` per head, as a block matrix
    :math:`\tilde{\mathbf{X}}` :math:`(NH, FH)` with
    :math:`\tilde{X}_{iH+k,\, fH+k} = X_{if}` (zero across heads), so that with
    :math:`\mathbf{W}` :math:`(F, H, C)` viewed as :math:`(FH, C)`,
    :math:`\tilde{\mathbf{X}}\mathbf{W}` viewed as :math:`(N, HC)` is
    :math:`\mathbf{X}\mathbf{W}`, and dropout on :math:`\tilde{\mathbf{X}}` gives every head
    its own mask. The structure is built once per CSR structure (values change freely)."""
    crow, col = x.crow_indices(), x.col_indices()
    key = (crow.data_ptr(), tuple(x.shape), heads)
    c = _HEAD_COPIES.get(col, key, lambda: _HeadCopies(x, heads))
    values = x.values().index_select(0, c.source)
    return torch.sparse_csr_tensor(c.crow, c.col, values, c.shape, check_invariants=False)


def project_per_head(x: Tensor, weight: Tensor, heads: int, p: float, training: bool) -> Tensor:
    r""":math:`\big\Vert_{k=1}^{H} \mathrm{drop}^{(k)}_p(\mathbf{X})\,\mathbf{W}^k`: the
    input dropped out independently for every head before that head's projection, as
    the official GAT code does (each ``attn_head`` drops its own copy of the input).

    ``weight`` :math:`(F, H, C)`; ``x`` :math:`(N, F)` dense or CSR → :math:`(N, HC)`.
    CSR inputs go through :func:`head_copies` (one sparse product; dropout on the
    :math:`H \cdot nnz` stored values), dense ones through a batched product.
    Without training or with :math:`p = 0` this is :func:`project` on the same weight.
    """
    f, h, c = weight.shape
    if not training or p == 0.0 or heads == 1:
        return project(dropout(x, p, training), weight.reshape(f, h * c))
    n = x.size(0)
    if is_csr(x):
        copies = dropout(head_copies(x, heads), p, training)
        return project(copies, weight.reshape(f * h, c)).view(n, h * c)
    xs = dropout(x.unsqueeze(0).expand(h, n, f), p, training)  # (H, N, F), own masks
    return torch.bmm(xs, weight.transpose(0, 1)).transpose(0, 1).reshape(n, h * c)


class SparseLinear(Linear):
    r""":class:`torch_geometric.nn.Linear` that also takes a CSR input,
    :math:`\mathbf{Y} = \mathbf{X}\mathbf{W}^\top + \mathbf{b}`.

    Same parameters, initialisation and state-dict names as PyG's ``Linear``, so it can
    stand in for the ``lin`` of ``GCNConv``/``GATConv``/``GATv2Conv``. The features are
    data: no gradient flows to a CSR input.

    Shapes: :math:`(N, F_{in})` dense or CSR → :math:`(N, F_{out})` dense.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not is_csr(x):
            return super().forward(x)
        out = project(x, self.weight.t())
        return out if self.bias is None else out + self.bias


def sparse_aware(linear: Linear) -> SparseLinear:
    """A :class:`SparseLinear` holding the same parameters as ``linear``."""
    new = SparseLinear(
        linear.in_channels,
        linear.out_channels,
        bias=linear.bias is not None,
        weight_initializer="glorot",
    )
    new.load_state_dict(linear.state_dict())
    return new
