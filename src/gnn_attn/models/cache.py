"""A small cache of what layers derive from a graph tensor."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from torch import Tensor

T = TypeVar("T")


class GraphCache(Generic[T]):
    """Values built from a graph tensor (self-loops and sorting, a normalisation, a
    transposed structure), for the last ``size`` graphs seen.

    A full-batch run alternates a few fixed graphs (the train, val and test receptive
    fields, the whole graph for the pictures): they all stay cached. Mini-batches bring
    a new graph each step and pass through. Every entry keeps its tensor alive, so that
    no later tensor can be allocated at the same address and match a stale key.
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[T, Tensor]] = OrderedDict()

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphCache[T]:
        """A copy of a layer starts with an empty cache (what it holds is derived from
        graphs, rebuilt when they come; CSR tensors cannot be deep-copied)."""
        return GraphCache(self.size)

    def get(self, tensor: Tensor, extra: tuple[Any, ...], build: Callable[[], T]) -> T:
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.device, *extra)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit[0]
        if len(self._entries) >= self.size:
            self._entries.popitem(last=False)
        value = build()
        self._entries[key] = (value, tensor)
        return value
