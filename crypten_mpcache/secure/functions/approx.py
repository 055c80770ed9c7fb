"""Range reduction and the iterations it feeds: the building blocks of the nonlinear functions.

CrypTen computes in fixed point with 16 fractional bits. Its ``inv_sqrt`` is accurate
only on about [0.1, 100] and its ``reciprocal`` breaks above ~1e3, while a real model's
RMSNorm inputs and long softmax rows leave those ranges. Both are handled by *range
reduction*: a handful of comparisons against public thresholds ``low * ratio**j`` (one
batched comparison round on a per-row scalar, so it is cheap) give the bucket of the
secret value; the value is scaled into [low, low*ratio) by a secret one-hot mix of public
factors; on that small interval 1/sqrt is read from a Taylor table (``functions.lookup``,
used by ``functions.norm``) and 1/x comes from Newton iterations started by a linear fit
(here), and the bucket's factor is re-applied as an exact scale-1 integer so that small
results keep all their fractional bits. ``exp_nonpositive`` is the exp of the softmax and
of the ``exp_poly`` SiLU.

All results carry the standard fixed-point encoder (comparison bits are re-encoded), so
that they can be multiplied with public fixed-point tensors safely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import crypten
import torch
from crypten.encoder import FixedPointEncoder

from crypten_mpcache.secure.functions.lookup import (
    segment_polynomial,
    segment_polynomial_pending,
    taylor_table,
)
from crypten_mpcache.secure.primitives.fixed_point import mul_public_int
from crypten_mpcache.secure.primitives.openings import (
    Pending,
    nothing_to_open,
    open_alone,
    then,
)
from crypten_mpcache.secure.primitives.select import less_than_zero_pending, relu


def ge_public(x: Any, thresholds: torch.Tensor) -> Any:
    """Scale-1 bits [x >= t] for public thresholds broadcast along a new last dim."""
    return x.unsqueeze(-1).ge(thresholds.to(torch.float64))


def _scale_pow2(y: Any, exponent: int) -> Any:
    """y * 2**exponent: an exact integer product or one public-integer truncation."""
    if exponent > 0:
        return mul_public_int(y, torch.tensor(2 ** exponent))
    if exponent < 0:
        return y.div(2 ** -exponent)
    return y


@lru_cache(maxsize=64)
def _linear_fit(kind: str, low: float, high: float) -> tuple[float, float]:
    """(a, b) minimising the relative error of a + b*v on [low, high] for 1/v or 1/sqrt v."""
    v = torch.linspace(low, high, 2001, dtype=torch.float64)
    target = v.rsqrt() if kind == "inv_sqrt" else v.reciprocal()
    design = torch.stack([torch.ones_like(v), v], dim=1) / target.unsqueeze(1)
    coef = torch.linalg.lstsq(design, torch.ones_like(v).unsqueeze(1)).solution.squeeze(1)
    return float(coef[0]), float(coef[1])


@dataclass(frozen=True)
class RangeReduction:
    """Buckets [low * ratio**j, low * ratio**(j+1)), j = 0..buckets-1, for a positive secret.

    Values below ``low`` fall in bucket 0 and values above the last edge in the last
    bucket; Newton then starts far from the root and may not converge, so choose the
    range with margin over what you measured.
    """

    low: float
    ratio: int
    buckets: int

    def __post_init__(self) -> None:
        if not self.low > 0:
            raise ValueError(f"low must be positive, got {self.low}")
        if self.ratio < 2 or (self.ratio & (self.ratio - 1)):
            raise ValueError(f"ratio must be a power of two >= 2, got {self.ratio}")
        exponent = math.log2(self.low)
        if abs(exponent - round(exponent)) > 1e-9:
            raise ValueError(f"low must be a power of two, got {self.low}")
        if self.buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {self.buckets}")

    @property
    def high(self) -> float:
        return self.low * self.ratio ** self.buckets

    @property
    def edges(self) -> torch.Tensor:
        """The buckets' inner edges (buckets - 1 of them)."""
        return torch.tensor([self.low * self.ratio ** j for j in range(1, self.buckets)],
                            dtype=torch.float64)

    def onehot(self, v: Any) -> Any:
        """Scale-1 one-hot (..., buckets) of v's bucket: one batched comparison round."""
        if self.buckets == 1:
            return None
        return self.onehot_from_bits(ge_public(v, self.edges))

    def onehot_from_bits(self, above: Any) -> Any:
        """The one-hot from the scale-1 bits [v >= edge_j] (..., buckets - 1): local."""
        ones = above[..., :1] * 0 + 1
        zeros = above[..., :1] * 0
        padded_hi = crypten.cat([ones, above], dim=-1)    # [v >= edge_j], j = 0..buckets-1
        padded_lo = crypten.cat([above, zeros], dim=-1)   # [v >= edge_{j+1}]
        return padded_hi - padded_lo

    def normalize(self, v: Any, onehot: Any) -> Any:
        """v / (low * ratio**bucket), in [1, ratio): one multiplication round,
        sum_j candidates(v)_j onehot_j."""
        if onehot is None:
            return self.candidates(v)
        return (self.candidates(v) * onehot).sum(-1)

    def candidates(self, v: Any) -> Any:
        """v / (low * ratio**j) for every bucket j (..., buckets), or for the one bucket
        (no new axis): local.

        Each bucket's factor 2**e is applied to v itself: an exact integer product where
        e >= 0, one batched division by public integers where e < 0 (factors below 2**-16
        would encode as zero). Dividing v, not v scaled up by 1 / low, keeps the dividend
        small: a 2-party truncation fails with probability ~ |dividend| / 2**63, so a low
        ``low`` costs no reliability.
        """
        exponents = [-round(math.log2(self.low * self.ratio ** j)) for j in range(self.buckets)]
        if self.buckets == 1:
            return _scale_pow2(v, exponents[0])
        column = v.unsqueeze(-1)                        # both ops broadcast it
        up = [2 ** e for e in exponents if e >= 0]
        down = [2 ** -e for e in exponents if e < 0]
        parts = [mul_public_int(column, torch.tensor(up))] if up else []
        parts += [column.div(torch.tensor(down))] if down else []
        return crypten.cat(parts, dim=-1)

    def pow2_factor(self, onehot: Any, exponents: list[int]) -> Any:
        """sum_j onehot_j * 2**exponents[j] at the fixed-point scale, exactly (local).

        Powers of two down to 2**-16 are exact in fixed point; building the factor from
        the scale-1 one-hot by integer share products loses nothing.
        """
        if min(exponents) < -16:
            raise ValueError("factors below 2**-16 are not representable; use fewer buckets")
        ints = torch.tensor([2 ** (e + 16) for e in exponents], dtype=torch.long)
        out = onehot.clone()
        out.share = out.share * ints
        out.encoder = FixedPointEncoder()
        return out.sum(-1)


def exp_nonpositive(d: Any, iterations: int = 8, order: int = 2) -> Any:
    """exp(d) for d <= 0 as T(d / 2**it) ** (2**it), T the Taylor polynomial of given order.

    CrypTen's exp uses order 1, whose relative error grows like d**2 / 2**(it+1) (5% at
    d = -5); order 2 costs one extra round and is below 0.3% for d >= -10. Valid for
    d > -1.5 * 2**iterations (the base stays positive).
    """
    y = d.div(2 ** iterations)
    base = y + 1
    if order >= 2:
        y2 = y.square()
        base = base + y2 * 0.5
        if order >= 3:
            base = base + y2 * y * (1.0 / 6.0)
    for _ in range(iterations):
        base = base.square()
    return base


def lookup_exp_nonpositive(d: Any, steps: int, width: int, bound_log2: int | None,
                           dcf_up_to: int | None = None) -> Any:
    """exp(d) for d <= 0 from a quadratic Taylor table of ``steps`` segments per unit, read
    through a dealt one-hot of ``width`` words: d is first clipped to -floor, floor =
    width / steps - 1 (exp(-floor) is below the fixed-point resolution from floor 12), by
    a fused select; 4 rounds where the squarings take 9. The table starts 2 / steps below
    -floor and at least 1 - 2 / steps above 0, so an index off by -2..+3 (CrypTen's
    3-party truncation; 2 parties: by one) stays inside it; relative error <= (2 / steps)**3
    / 6 (3.3e-4 at 16 steps; 3 parties: (4 / steps)**3 / 6). |d| < 2**bound_log2;
    ``dcf_up_to``: see ``select.fuses``.
    """
    floor = width / steps - 1.0
    start = -floor - 2.0 / steps
    clipped = relu(d + floor, bound_log2, dcf_up_to) - floor       # max(d, -floor)
    table = taylor_table("exp", start, steps, width, 2)
    return segment_polynomial(clipped - start, steps, table)


def newton_inv_sqrt(v: Any, low: float, high: float, iters: int) -> Any:
    a, b = _linear_fit("inv_sqrt", low, high)
    y = v * b + a
    for _ in range(iters):
        y = y * (3 - v * y.square()) * 0.5
    return y


def newton_reciprocal(v: Any, low: float, high: float, iters: int) -> Any:
    a, b = _linear_fit("reciprocal", low, high)
    y = v * b + a
    for _ in range(iters):
        y = y * (2 - v * y)
    return y


def table_reciprocal(v: Any, start: float, steps: int, width: int, order: int) -> Any:
    """1/v from a Taylor table of ``width`` segments of 1 / ``steps`` from ``start``, read
    through a dealt one-hot: 1 + ``order`` rounds. The index may be off by one segment
    (2 parties), so the polynomial reaches up to 2 / steps past a segment's start:
    relative error <= (2 / steps)**(order + 1) for v >= 1."""
    return open_alone(table_reciprocal_pending(v, start, steps, width, order))


def table_reciprocal_pending(v: Any, start: float, steps: int, width: int, order: int
                             ) -> Pending[Any]:
    """``table_reciprocal`` as a chain of stages for ``openings.run_together``."""
    table = taylor_table("reciprocal", start, steps, width, order)
    return segment_polynomial_pending(v - start, steps, table)


def lookup_reciprocal(v: Any, ratio: int, steps: int, order: int = 2) -> Any:
    """1/v for v in [1, ratio) (the table covers [0.5, ratio + 0.5)), where Newton takes 2
    rounds per iteration: 3.1e-5 at order 2 and 64 steps, 1.5e-5 at order 1 and 512."""
    return table_reciprocal(v, 0.5, steps, ratio * steps, order)


def reciprocal(d: Any, reduction: RangeReduction, iters: int,
               lookup_steps: int | None = None, lookup_order: int = 2) -> Any:
    """1/d for d in [low, high]: range reduction, then on [1, ratio) a table read
    (``lookup_steps`` segments per unit) or Newton (``iters`` iterations from a linear fit).

    The result is y_n * 2**-(e log2 ratio) with an exact power of two; its absolute error
    is ~2**-16 (the output encoding's), whatever the magnitude of d.
    """
    return open_alone(reciprocal_pending(d, reduction, iters, lookup_steps, lookup_order))


def reciprocal_pending(d: Any, reduction: RangeReduction, iters: int,
                       lookup_steps: int | None = None, lookup_order: int = 2
                       ) -> Pending[Any]:
    """``reciprocal`` with its first opening (the bucket comparisons' [d < edge]) left to
    ``openings.run_together``; the rest runs after it."""
    if reduction.buckets == 1:
        return nothing_to_open(lambda: _reduced_reciprocal(d, reduction, None, iters,
                                                           lookup_steps, lookup_order))
    below = less_than_zero_pending(d.unsqueeze(-1) - reduction.edges)
    return then(below, lambda bits: _reduced_reciprocal(
        d, reduction, reduction.onehot_from_bits(1 - bits), iters, lookup_steps,
        lookup_order))


def _reduced_reciprocal(d: Any, reduction: RangeReduction, onehot: Any, iters: int,
                        lookup_steps: int | None, lookup_order: int) -> Any:
    """1/d from d's bucket one-hot (None: one bucket)."""
    d_n = reduction.normalize(d, onehot)
    if lookup_steps:
        y_n = lookup_reciprocal(d_n, reduction.ratio, lookup_steps, lookup_order)
    else:
        y_n = newton_reciprocal(d_n, 1.0, float(reduction.ratio), iters)
    if onehot is None:
        return y_n * (1.0 / reduction.low)
    m = -round(math.log2(reduction.low))
    r = round(math.log2(reduction.ratio))
    return y_n * reduction.pow2_factor(onehot, [m - r * j for j in range(reduction.buckets)])
