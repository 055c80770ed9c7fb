"""The secure RMSNorm: 1 / sqrt(mean(x^2) + eps) by range reduction and a Taylor table.

Measured ranges on the embedded SmolLM2-135M-Instruct (plaintext forward hooks, 6 essays
of ``assets.essay_texts()`` truncated to 1024 tokens plus 4 chat-templated prompts; see
``docs/numerics.md`` and the slow test ``test_measured_ranges_inside_supported``):
mean(x^2) at the input of every RMSNorm (61 norms): [0.00594, 1.12e6], with single
activations up to |x| = 25,199. ``NormConfig`` covers [4**-8, 4**13] ~ [1.5e-5, 6.7e7]
(also the small inputs of randomly initialised test models and of embedding rows).

Charged to ``operator_scope("norm")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import crypten
import torch

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.functions.approx import RangeReduction, ge_public, newton_inv_sqrt
from crypten_mpcache.secure.functions.lookup import (
    segment_parts,
    segment_polynomial,
    segment_polynomial_with,
    table_read,
    taylor_table,
)
from crypten_mpcache.secure.primitives.fixed_point import mul_public_int
from crypten_mpcache.secure.primitives.opened_input import OpenedInput, open_input_pending
from crypten_mpcache.secure.primitives.openings import Pending, open_alone, open_together
from crypten_mpcache.secure.primitives.products import multiply_together, products_pending


@dataclass(frozen=True)
class NormConfig:
    """Knobs of the secure RMSNorm.

    low, ratio, buckets: the range-reduction buckets of mean(x^2) + eps (RangeReduction);
        low must be a power of 4, ratio 4 or 16.
    coarse_shift, coarse_switch: squaring a massive activation (|x| ~ 25,000 in SmolLM2)
        at 16 fractional bits makes CrypTen's 2-party truncation wrap with probability
        ~x^2 / 2**32. mean(x^2) is therefore computed twice, from x (fine) and from
        x / 2**coarse_shift (coarse); one comparison per row picks the coarse value when it
        is >= coarse_switch. Below the switch no element can wrap; above it the coarse
        value has ample relative precision.
    medium_shift, medium_switch: the same between fine and coarse. Rows below the coarse
        switch still hold single elements up to |x| ~ 135 on SmolLM2 (x^2 ~ 18,000):
        their fine squares made ~0.7% of 55-token prefills wrap (measured, see
        docs/numerics.md). Such rows (mean(x^2) >= medium_switch) take mean((x/2**s)^2)
        * 4**s instead, 4**s times less likely to wrap; the fine value is kept only for
        rows below medium_switch, whose elements are all small. 0 turns it off.
        Both switches compare the COARSE value (it never wraps; its absolute error,
        ~0.25 (1 + max|x| / 64), only blurs where the medium switch falls, and a row whose
        elements could wrap a fine square has mean(x^2) far above it), so the switch bits
        are monotone and the pick is one product round.
    inv_sqrt: how 1/sqrt is taken on [1, ratio): "lookup" (default: a dealt one-hot reads
        the segment's Taylor coefficients of order ``lookup_order`` from a public table,
        1 + order rounds; its one-hot of width ratio * lookup_steps is dealt as DPF keys,
        one row per token) or "newton" (a linear start and ``newton_iters`` Newton steps, 3
        rounds each).
    lookup_steps, lookup_order: table segments per unit (a power of two; the table covers
        [0.5, ratio + 0.5)) and the Taylor order (1 or 2). The index may be off by one,
        so the polynomial reaches 2 / steps past a segment's start: relative error
        <= 0.375 (2 / steps)^2 at order 1 (2.3e-5 at the default 256), ~(15/8)
        (2 / steps)^3 / 6 at order 2 (9.5e-5 at 32).
    newton_iters: Newton iterations of 1/sqrt on [1, ratio) ("newton" only).
    """

    low: float = 4.0 ** -8
    ratio: int = 4
    buckets: int = 21
    coarse_shift: int = 7
    coarse_switch: float = 64.0
    medium_shift: int = 3
    medium_switch: float = 1.0
    inv_sqrt: str = "lookup"
    lookup_steps: int = 256
    lookup_order: int = 1
    newton_iters: int = 3

    def __post_init__(self) -> None:
        RangeReduction(self.low, self.ratio, self.buckets)  # validates
        if self.inv_sqrt not in ("lookup", "newton"):
            raise ValueError(f"inv_sqrt must be 'lookup' or 'newton', got {self.inv_sqrt!r}")
        if not 1 <= self.lookup_steps <= 1024 or self.lookup_steps & (self.lookup_steps - 1):
            raise ValueError("lookup_steps must be a power of two in [1, 1024]")
        if self.lookup_order not in (1, 2):
            raise ValueError(f"lookup_order must be 1 or 2, got {self.lookup_order}")
        m = math.log(self.low, 4)
        if abs(m - round(m)) > 1e-9:
            raise ValueError(f"low must be a power of 4, got {self.low}")
        if self.ratio not in (4, 16):
            raise ValueError(f"ratio must be 4 or 16, got {self.ratio}")
        if not 0 <= self.coarse_shift <= 14:
            raise ValueError("coarse_shift must be in [0, 14]")
        if not self.coarse_switch > 0:
            raise ValueError("coarse_switch must be positive")
        if self.medium_shift and not 0 < self.medium_shift < self.coarse_shift:
            raise ValueError("medium_shift must be 0 (off) or in (0, coarse_shift)")
        if self.medium_shift and not 0 < self.medium_switch < self.coarse_switch:
            raise ValueError("medium_switch must be in (0, coarse_switch)")
        if self.newton_iters < 0:
            raise ValueError("newton_iters must be >= 0")

    @property
    def reduction(self) -> RangeReduction:
        return RangeReduction(self.low, self.ratio, self.buckets)


def _apply_weight(y: Any, weight: Any) -> Any:
    if weight is None:
        return y
    if isinstance(weight, torch.Tensor) or _is_cryptensor(weight):
        return y * weight
    return weight.mul(y)                                  # a premasked fixed operand


def _is_cryptensor(value: Any) -> bool:
    return crypten.is_encrypted_tensor(value)


def _shifts(config: NormConfig) -> list[int]:
    """The estimates' shifts: fine (0), then medium and coarse when configured."""
    if config.coarse_shift == 0:
        return [0]
    return [0, *([config.medium_shift] if config.medium_shift else []), config.coarse_shift]


def _switches(config: NormConfig) -> list[float]:
    """Estimate i >= 1 takes over when the coarse value is >= switch i - 1 (ascending, so
    the bits are monotone: the coarsest set one wins)."""
    if config.coarse_shift == 0:
        return []
    return [*([config.medium_switch] if config.medium_shift else []), config.coarse_switch]


def mean_square_estimates(x: Any, config: NormConfig = NormConfig()) -> Any:
    """``(E, ..., 1)``: mean((x / 2**s)^2) * 4**s for each shift s of ``config`` (fine,
    medium, coarse), from ONE opening of x (``primitives.opened_input``: the dealer's
    truncated masks give every shift's square). The 4**s times smaller squares keep
    massive activations from wrapping the truncation; ``rms_norm`` picks the coarsest
    estimate above its switch."""
    return _estimates(open_alone(_opening(x, config, fused=False)), config)


def _opening(x: Any, config: NormConfig, fused: bool) -> Pending[OpenedInput]:
    """x's one opening, with the later x * S (S one word per row) dealt when ``fused``."""
    return open_input_pending(x, tuple(_shifts(config)),
                              (*x.shape[:-1], 1) if fused else None)


def _estimates(opened: OpenedInput, config: NormConfig) -> Any:
    squares = opened.squares().mean(-1, keepdim=True)
    factors = torch.tensor([4 ** s for s in _shifts(config)])
    return mul_public_int(squares, factors.view(-1, *([1] * (squares.dim() - 1))))


def _fused(config: NormConfig) -> bool:
    """The default order-1 table with switches and buckets: its tail takes x * S from x's
    one opening (``_picked_order1``)."""
    return bool(_switches(config)) and config.reduction.buckets > 1 and \
        config.inv_sqrt == "lookup" and config.lookup_order == 1


def _take_over(values: Any, bits: list[Any]) -> Any:
    """values[i] for the last set bit i (values[0] when none is), for MONOTONE bits (bit i
    set implies bit i - 1 set): values[0] + sum_i bit_i (values[i] - values[i - 1]), one
    batched product round. Exact in the ring, so a wrapped value that is not taken
    cancels."""
    if not bits:
        return values[0]
    steps, selectors = _taken_scale(values, bits)
    return values[0] + (selectors * steps).sum(0)


def _taken_scale(values: Any, bits: list[Any]) -> tuple[Any, Any]:
    """The pair (steps, selectors) whose product, summed over the first axis and added to
    values[0], is the taken estimate's value (``_take_over`` with its product left to the
    caller's round)."""
    steps = crypten.stack([values[i] - values[i - 1] for i in range(1, len(bits) + 1)])
    selectors = crypten.stack(bits)
    while selectors.dim() < steps.dim():                # bits broadcast like values[i]
        selectors = selectors.unsqueeze(1)
    return steps, selectors


def _inv_sqrt_normalized(v_n: Any, config: NormConfig, x: Any, scale: Any
                         ) -> tuple[Any, Any]:
    """(1 / sqrt(v_n) for v_n in [1, ratio), x * scale): with the table, x * scale rides in
    the table's product round."""
    if config.inv_sqrt == "newton":
        y_n = newton_inv_sqrt(v_n, 1.0, float(config.ratio), config.newton_iters)
        return y_n, x * scale
    steps = config.lookup_steps
    table = taylor_table("inv_sqrt", 0.5, steps, config.ratio * steps, config.lookup_order)
    if not crypten.is_encrypted_tensor(scale):
        return segment_polynomial(v_n - 0.5, steps, table), x * scale
    y_n, (scaled,) = segment_polynomial_with(v_n - 0.5, steps, table, [(x, scale)])
    return y_n, scaled


def normalized(x: Any, eps: float, config: NormConfig = NormConfig()) -> Any:
    """x / sqrt(mean(x^2, -1) + eps) = (x * S) * y_n: S an exact power of two, y_n in
    (1/sqrt(ratio), 1], of the estimate the switches pick.

    Why every estimate goes the whole way: the switches between the estimates and the
    range-reduction buckets are then ONE comparison round on per-row scalars (the
    estimates' bucket bits do not wait for the pick). Rounds with the default order-1
    table: the squares; the comparison; the estimates' normalization beside the taken
    scale S; the table's opening beside x * S and the pick's weights times the Taylor
    steps; the picked coefficients; (x * S) * y_n: 6. The pick is exact (bits times
    values, no truncation before it), so a wrapped estimate that is not taken cancels.
    v = v_n * low * ratio**e with v_n in [1, ratio); S = (low * ratio**e)**-1/2.
    """
    fused = _fused(config)
    opened = open_alone(_opening(x, config, fused))
    v_n, scale, picks = _reduced(opened, eps, config)
    if fused:
        return _picked_order1(opened, v_n, scale, picks, config)
    y_n, scaled = _inv_sqrt_normalized(v_n, config, x, scale)
    return scaled * _take_over(y_n, picks)


def _reduced(opened: OpenedInput, eps: float, config: NormConfig
             ) -> tuple[Any, Any, list[Any]]:
    """(v_n, S, picks): every estimate's v normalized into [1, ratio) (E, ..., 1), the
    taken estimate's scale S (..., 1) and the switches' monotone pick bits; 2 rounds
    after x's opening."""
    red = config.reduction
    v = _estimates(opened, config) + eps
    switches = _switches(config)
    edges = red.edges                                   # empty with one bucket
    thresholds = torch.cat([edges, torch.tensor(switches, dtype=torch.float64) + eps])
    bits = ge_public(v, thresholds) if len(thresholds) else None   # one comparison round
    m = round(-math.log2(red.low)) // 2
    r = round(math.log2(red.ratio)) // 2
    coarse = len(switches)                              # the last estimate
    picks = [bits[coarse, ..., len(edges) + i] for i in range(len(switches))]
    if red.buckets == 1:
        return red.candidates(v), torch.tensor(2.0 ** m), picks
    onehot = red.onehot_from_bits(bits[..., : len(edges)])
    scales = red.pow2_factor(onehot, [m - r * j for j in range(red.buckets)])
    pairs = [(red.candidates(v), onehot)]
    if picks:
        pairs.append(_taken_scale(scales, picks))
    products = multiply_together(pairs)                 # one round
    scale = scales[0] + products[1].sum(0) if picks else scales[0]
    return products[0].sum(-1), scale, picks


def _weights(picks: list[Any]) -> Any:
    """The estimates' one-hot (E, ..., 1) from the monotone pick bits: estimate i is taken
    when bit i is set (bit 0 always is) and bit i + 1 is not (local)."""
    ones = picks[0] * 0 + 1
    upper, lower = [ones, *picks], [*picks, ones * 0]
    return crypten.stack([u - low for u, low in zip(upper, lower, strict=True)])


def _picked_order1(opened: OpenedInput, v_n: Any, scale: Any, picks: list[Any],
                   config: NormConfig) -> Any:
    """The order-1 table's tail in 3 rounds: y = sum_e w_e c0_e + c1_e (w_e d_e) with the
    one-hot weights w; w_e d_e and x * S beside the table's opening (bits times values:
    exact, so a wrapped estimate's d cancels; x * S opens only S, x was opened for the
    squares), the two picked terms in one round, then (x * S) * y."""
    steps = config.lookup_steps
    table = taylor_table("inv_sqrt", 0.5, steps, config.ratio * steps, 1)
    segment, d = segment_parts(v_n - 0.5, steps, int(table.shape[-1]))
    weights = _weights(picks)
    onehots, (picked_d,), scaled = open_together(segment, products_pending([(weights, d)]),
                                                 opened.times_pending(scale))
    c0, c1 = table_read(onehots, table[0]), table_read(onehots, table[1])
    picked_c0, picked_c1d = multiply_together([(weights, c0), (c1, picked_d)])
    return scaled * (picked_c0 + picked_c1d).sum(0)


def rms_norm(x: Any, weight: Any, eps: float, *, config: NormConfig = NormConfig()) -> Any:
    """x * inv_sqrt(mean(x^2, -1) + eps) * weight, accurate over the real SmolLM2 range.

    ``weight``: an MPCTensor, a public tensor, an object with ``.mul(y)`` (a premasked
    fixed operand) or None. x is first multiplied by the exact power of two S ~ 1/rms
    (so that no product is large enough to wrap), then by y_n in (0.5, 1].
    """
    with operator_scope("norm"):
        return _apply_weight(normalized(x, eps, config), weight)
