"""The Backend protocol: the only operations the MPCache algorithm may use.

The algorithm (static eviction, cluster boxes, hierarchical selection, baselines) is written
once against this protocol and runs on plaintext torch tensors (``TorchBackend``) or on
secret-shared CrypTensors (a CrypTen backend). To make the second possible every operation
has PUBLIC output shapes: they depend only on input shapes and on public integers (``k``,
budgets, cluster sizes). The algorithm never branches on a value, only on shapes and on
public configuration.

Values. A *value* is whatever the backend computes on (``torch.Tensor`` here, ``MPCTensor``
under CrypTen). Every binary operation must also accept a plain ``torch.Tensor`` for either
operand: such an operand is public (e.g. an identity matrix, a public constant). Shape
methods are called directly on values and must behave like torch: ``.shape``,
``.reshape``, ``.transpose``, ``.unsqueeze``, ``.expand`` and basic slicing with public
Python ints (``x[..., a:b, :]``). CrypTensors support all of these.

Operations (``...`` = any number of broadcast leading dims):

- ``matmul(a, b)``: batched ``a @ b`` with torch broadcasting. Either side may be public.
- ``mul(a, b)``, ``add(a, b)``, ``sub(a, b)``: elementwise with broadcasting.
- ``scale(a, c)``: ``a * c`` for a public Python float ``c``.
- ``maximum(a, b)``, ``minimum(a, b)``: elementwise max/min with broadcasting
  (one secure comparison per output element under MPC).
- ``max(x, dim)``, ``min(x, dim)``: reduction over ``dim`` (removed), values only; under
  MPC a log-depth tree of comparisons.
- ``sum(x, dim, keepdim=False)``, ``mean(x, dim, keepdim=False)``: linear reductions.
- ``softmax(x, dim)``: numerically stable softmax (used only by attention helpers and the
  H2O baseline).
- ``cat(xs, dim)``: concatenation of a list of values.
- ``topk_onehot(scores, k)``: ``scores (..., G)`` -> one-hot selection ``(..., k, G)``
  with the same dtype/kind as the inputs (secret under MPC). Row ``r`` has a single 1 in
  the column of the r-th selected item *in ascending original index order* (rows are
  NOT sorted by score), so gathering with it keeps the original order. The selected set
  is the ``k`` largest scores; ties go to the lower index. ``k`` is a public int with
  ``0 <= k <= G``; ``k == 0`` returns an empty ``(..., 0, G)`` matrix. With
  ``ordered=False`` the rows may come in another order (rank order, best first, where the
  protocol has one): for consumers that gather and then attend over the rows (dynamic
  selection), where it saves a comparison round under MPC. Static eviction keeps order.
- ``gather(onehot, x)``: ``onehot (..., k, G) @ x (..., G, D) -> (..., k, D)``; a matmul,
  kept separate so a backend can charge it to the "gather" cost bucket.
- ``reveal(x)``: plaintext ``torch.Tensor`` of ``x``. TEST/DEBUG ONLY: the algorithm never
  calls it (under MPC it would leak which tokens were kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

Value = Any  # torch.Tensor or a CrypTen MPCTensor


@runtime_checkable
class Backend(Protocol):
    """Operations with public shapes; see the module docstring for exact semantics."""

    name: str

    def matmul(self, a: Value, b: Value) -> Value: ...

    def mul(self, a: Value, b: Value) -> Value: ...

    def add(self, a: Value, b: Value) -> Value: ...

    def sub(self, a: Value, b: Value) -> Value: ...

    def scale(self, a: Value, c: float) -> Value: ...

    def maximum(self, a: Value, b: Value) -> Value: ...

    def minimum(self, a: Value, b: Value) -> Value: ...

    def max(self, x: Value, dim: int) -> Value: ...

    def min(self, x: Value, dim: int) -> Value: ...

    def box(self, x: Value, dim: int) -> tuple[Value, Value]:
        """``(max, min)`` over ``dim`` together (a bounding box), cheaper than both apart."""
        ...

    def max_min(self, upper: Value, lower: Value, dim: int) -> tuple[Value, Value]:
        """``(max(upper), min(lower))`` over ``dim`` together (merging child boxes)."""
        ...

    def sum(self, x: Value, dim: int, keepdim: bool = False) -> Value: ...

    def mean(self, x: Value, dim: int, keepdim: bool = False) -> Value: ...

    def softmax(self, x: Value, dim: int) -> Value: ...

    def cat(self, xs: Sequence[Value], dim: int) -> Value: ...

    def topk_onehot(self, scores: Value, k: int, ordered: bool = True) -> Value: ...

    def gather(self, onehot: Value, x: Value) -> Value: ...

    def reveal(self, x: Value) -> torch.Tensor: ...


def onehot_to_indices(onehot: torch.Tensor) -> torch.Tensor:
    """Plaintext helper (tests, debug records): ``(..., k, G)`` one-hot -> ``(..., k)`` ints."""
    if onehot.shape[-2] == 0:
        return torch.zeros(onehot.shape[:-1], dtype=torch.long, device=onehot.device)
    return onehot.argmax(dim=-1)
