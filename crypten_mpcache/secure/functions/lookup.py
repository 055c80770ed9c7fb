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
    Order 2: d^2 is squared beside the index's opening, so the polynomial is one round
    after it (2 rounds in all, Horner's 3)."""
    pending, d = segment_parts(shifted, steps, int(table.shape[-1]))
    if int(table.shape[0]) == 3:
        bits, powers = open_together(pending, products_pending([(d, d)]))
        return polynomial(bits, d, table, alongside, powers)
    bits = open_alone(pending)
    return polynomial(bits, d, table, alongside)


def segment_polynomial_pending(shifted: Any, steps: int, table: torch.Tensor) -> Pending[Any]:
    """``segment_polynomial`` as a chain of stages for ``openings.run_together``: the
    index's opening (with d^2 at order 2), then the polynomial's products."""
    pending, d = segment_parts(shifted, steps, int(table.shape[-1]))
    if int(table.shape[0]) != 3:
        return then(pending, lambda bits: polynomial(bits, d, table)[0])
    return then(together(pending, products_pending([(d, d)])),
                lambda opened: then(polynomial_pending(opened[0], d, table, opened[1]),
                                    lambda result: result[0]))


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


def polynomial_pending(bits: Any, d: Any, table: torch.Tensor, powers: Sequence[Any],
                       alongside: Sequence[tuple[Any, Any]] = ()
                       ) -> Pending[tuple[Any, list[Any]]]:
    """``polynomial`` given ``powers`` = [d^2, ..., d^order]: its one product round (every
    c_k d^k and the products ``alongside``) left to ``openings.run_together``."""
    if len(powers) != int(table.shape[0]) - 2:
        raise ValueError(f"powers must hold d^2..d^{int(table.shape[0]) - 1}")
    terms = [(table_read(bits, table[k]), p) for k, p in enumerate([d, *powers], 1)]

    def total(products: list[Any]) -> tuple[Any, list[Any]]:
        out = table_read(bits, table[0])
        for term in products[: len(terms)]:
            out = out + term
        return out, products[len(terms):]

    return then(products_pending([*terms, *alongside]), total)


def polynomial(bits: Any, d: Any, table: torch.Tensor,
               alongside: Sequence[tuple[Any, Any]] = (),
               powers: Sequence[Any] | None = None) -> tuple[Any, list[Any]]:
    """sum_k table[k, v] d^k from the one-hot ``bits``, with the products ``alongside`` in
    its last product round: one round given ``powers`` = [d^2, ..., d^order] (each c_k
    d^k at once), else Horner (one round per order)."""
    if powers is not None:
        return open_alone(polynomial_pending(bits, d, table, powers, alongside))
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
