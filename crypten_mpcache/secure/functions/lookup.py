"""Functions read from public tables through the dealt one-hot (``secure.primitives.onehot``).

Why: reading a segment's Taylor coefficients costs one opened word per element and
local table products, fewer rounds than a polynomial, an exp or Newton iterations. The
SiLU (``functions.silu``, method "lookup"), the RMSNorm's 1/sqrt and the softmax's 1/x
use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from crypten.encoder import FixedPointEncoder

from crypten_mpcache.secure.primitives.fixed_point import fixed_scale, mul_public_int
from crypten_mpcache.secure.primitives.onehot import onehot_pending
from crypten_mpcache.secure.primitives.opened_input import OpenedInput, open_input_pending
from crypten_mpcache.secure.primitives.openings import (
    Pending,
    open_alone,
    open_together,
    then,
    together,
)
from crypten_mpcache.secure.primitives.products import multiply_together, products_pending


def _taylor_coefficients(kind: str, t: torch.Tensor) -> list[torch.Tensor]:
    """f(t), f'(t), f''(t) / 2 of silu, 1/sqrt, 1/t or exp."""
    if kind == "silu":
        s = torch.sigmoid(t)
        return [t * s, s * (1 + t * (1 - s)), s * (1 - s) * (2 + t * (1 - 2 * s)) / 2]
    if kind == "inv_sqrt":
        return [t.rsqrt(), -0.5 * t.pow(-1.5), 0.375 * t.pow(-2.5)]
    if kind == "reciprocal":
        return [t.reciprocal(), -t.pow(-2), t.pow(-3)]
    if kind == "exp":
        return [t.exp(), t.exp(), t.exp() / 2]
    raise ValueError(f"no Taylor table for {kind!r}")


@lru_cache(maxsize=8)
def taylor_table(kind: str, start: float, steps: int, width: int, order: int
                 ) -> torch.Tensor:
    """(order + 1, width) raw fixed-point Taylor coefficients at each segment's left end
    t_j = start + j / steps."""
    t = start + torch.arange(width, dtype=torch.float64) / steps
    return torch.stack([(c * fixed_scale()).round().long()
                        for c in _taylor_coefficients(kind, t)[:order + 1]])


def table_read(onehot_bits: Any, table_row: torch.Tensor) -> Any:
    """sum_j onehot[..., j] * table_row[j] for a public raw fixed-point row: local, exact."""
    out = onehot_bits[..., 0].clone()
    out.share = onehot_bits.share.matmul(table_row)
    out.encoder = FixedPointEncoder()
    return out


def segment_polynomial(shifted: Any, steps: int, table: torch.Tensor) -> Any:
    """sum_k table[k, v] d^k: v = floor(shifted * steps) read through the dealt one-hot
    (one opened word), d = shifted - v / steps.

    v comes from a local truncation of the shares, so it may be off by one (CrypTen's
    3-party truncation: -2..+3); d is computed from the same v, so the polynomial then
    reaches one segment further. ``shifted`` must keep v inside [0, width) or the caller
    must gate the outside (v is read mod width)."""
    return segment_polynomial_with(shifted, steps, table, ())[0]


def segment_polynomial_with(shifted: Any, steps: int, table: torch.Tensor,
                            alongside: Sequence[tuple[Any, Any]]) -> tuple[Any, list[Any]]:
    """``segment_polynomial`` and the independent products ``alongside`` (pairs of
    secrets), the latter in the polynomial's last product round (no round of their own).
    Order 2: d is opened beside the index (``step_opening``: d^2 from that opening), so
    the polynomial is one round after it (2 rounds in all, Horner's 3)."""
    pending, d = segment_parts(shifted, steps, int(table.shape[-1]))
    if int(table.shape[0]) == 3:
        bits, step = open_together(pending, step_opening(d))
        return polynomial(bits, d, table, alongside, step)
    bits = open_alone(pending)
    return polynomial(bits, d, table, alongside)


def segment_polynomial_pending(shifted: Any, steps: int, table: torch.Tensor) -> Pending[Any]:
    """``segment_polynomial`` as a chain of stages for ``openings.run_together``: the
    index's opening (with d^2 at order 2), then the polynomial's products."""
    pending, d = segment_parts(shifted, steps, int(table.shape[-1]))
    if int(table.shape[0]) != 3:
        return then(pending, lambda bits: polynomial(bits, d, table)[0])
    return then(together(pending, step_opening(d)),
                lambda opened: then(polynomial_pending(opened[0], d, table, opened[1]),
                                    lambda result: result[0]))


def step_opening(d: Any) -> Pending[OpenedInput]:
    """The Taylor step's one opening at order 2 (``primitives.opened_input``): d^2 from
    it, and c_1 d later opens only c_1."""
    return open_input_pending(d, (0,), tuple(d.shape))


def segment_parts(shifted: Any, steps: int, width: int) -> tuple[Pending[Any], Any]:
    """The segment's one-hot (its opening left to ``openings.open_together``) and the
    Taylor step d = shifted - v / steps (local, known before the opening): ``polynomial``
    reads the table with both."""
    segment = mul_public_int(shifted, torch.tensor(steps))
    segment._tensor.div_(fixed_scale())           # CrypTen's truncation (any party count)
    segment.encoder = FixedPointEncoder(precision_bits=0)  # v (maybe off by one): scale 1
    start = mul_public_int(segment, torch.tensor(fixed_scale() // steps))
    start.encoder = FixedPointEncoder()            # raw v * 2^16 / steps = v / steps, exact
    return onehot_pending(segment, width), shifted - start   # [v mod W == j], d


def polynomial_pending(bits: Any, d: Any, table: torch.Tensor, step: OpenedInput,
                       alongside: Sequence[tuple[Any, Any]] = ()
                       ) -> Pending[tuple[Any, list[Any]]]:
    """The order-2 ``polynomial`` given d's opening ``step`` (``step_opening``): its one
    product round (c_1 d opening c_1 only, c_2 d^2 and the products ``alongside``) left
    to ``openings.run_together``."""
    if int(table.shape[0]) != 3:
        raise ValueError("polynomial_pending takes an order-2 table")
    c1, c2 = table_read(bits, table[1]), table_read(bits, table[2])
    square = step.squares()[0]

    def total(products: list[Any]) -> tuple[Any, list[Any]]:
        c1_d, (c2_d2, *extra) = products
        return table_read(bits, table[0]) + c1_d + c2_d2, extra

    return then(together(step.times_pending(c1),
                         products_pending([(c2, square), *alongside])), total)


def polynomial(bits: Any, d: Any, table: torch.Tensor,
               alongside: Sequence[tuple[Any, Any]] = (),
               step: OpenedInput | None = None) -> tuple[Any, list[Any]]:
    """sum_k table[k, v] d^k from the one-hot ``bits``, with the products ``alongside`` in
    its last product round: one round at order 2 given d's opening ``step`` (each c_k d^k
    at once), else Horner (one round per order)."""
    if step is not None:
        return open_alone(polynomial_pending(bits, d, table, step, alongside))
    out = table_read(bits, table[-1])
    rows = list(reversed(range(int(table.shape[0]) - 1)))
    extra: list[Any] = []
    for row in rows:
        if row == rows[-1] and alongside:          # the last product: with the others
            product, *extra = multiply_together([(out, d), *alongside])
        else:
            product = out * d
        out = product + table_read(bits, table[row])
    if alongside and not rows:
        extra = multiply_together(list(alongside))
    return out, extra
