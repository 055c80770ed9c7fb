"""The masked softmax: a tournament row max, an order-2 exp and a range-reduced reciprocal.

The reciprocal is a table read on the reduced range (or Newton's iterations).

Charged to ``operator_scope("softmax")``; the result carries the standard fixed-point
encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.functions.approx import (
    RangeReduction,
    exp_nonpositive,
    lookup_exp_nonpositive,
    reciprocal_pending,
    table_reciprocal_pending,
)
from crypten_mpcache.secure.functions.tournament import tournament_max
from crypten_mpcache.secure.primitives.fixed_point import mul_public_int
from crypten_mpcache.secure.primitives.onehot import width_for
from crypten_mpcache.secure.primitives.openings import Pending, open_alone
from crypten_mpcache.secure.primitives.select import fuses


@dataclass(frozen=True)
class SoftmaxConfig:
    """Knobs of the masked softmax.

    fill: public value that masked scores take before the row max (must be below every
        real score; it never reaches exp's output because masked exps are zeroed).
    score_bound_log2: |score| < 2**score_bound_log2 for every score and the fill; the row
        max's DCF keys then compare score_bound_log2 + 17 bits, not 63 (SmolLM2's scores
        stay below 2**6; exp is valid for differences above -2**exp_iterations anyway).
    exp: how exp(d <= 0) is taken: "squaring" (``exp_nonpositive``, exp_iterations + 1
        rounds, no dealer material), "lookup" (``lookup_exp_nonpositive``: a fused clip and
        a table of ``exp_lookup_steps`` segments per unit read through a dealt one-hot of
        ``exp_lookup_width`` entries per element (DPF keys); 4 rounds, relative error
        <= 3.3e-4 at 16 steps) or "auto" (default): the table where the clip fuses (dcf,
        or hybrid under the softmax's own threshold, below) and the call has at most
        ``exp_lookup_max_elements`` elements (a public shape: an MPCache step's few
        attended tokens), squaring otherwise.
    dcf_max_elements, dcf_max_per_row: under ``--comparison hybrid``, the softmax's
        comparisons (each level of the row max, the exp's clip) take DCF keys when the call
        has at most ``dcf_max_elements`` elements AND at most ``dcf_max_per_row`` per row,
        whatever the protocol's threshold (both are public shapes). They save 3-4 rounds
        a call for keys of ~2 KiB an element (both parties' keys and the select's
        payload; the masked comparison deals ~0.15 KiB), and a decode step has few of
        them, where a SiLU's gates, as many elements per call in every layer, would take a
        model's whole dealer budget (docs/fss.md, "One-hots from DPF keys"). The per-row
        bound keeps a decode step's keys from growing with the context: a row max then
        deals keys for its last levels only (at most 2 x dcf_max_per_row elements a row)
        and the exp's clip only for rows that short (docs/fss.md, "Keys that stop
        growing").
    exp_iterations, exp_order: see ``exp_nonpositive``; exp(d) is valid for d > -2**iters.
    ratio, buckets: range reduction of the denominator, which lies in [1, allowed count]:
        rows of up to ratio**buckets allowed entries are exact to Newton precision.
    reciprocal: how 1/d is taken on [1, ratio): "lookup" (default: a Taylor table of
        order ``lookup_order`` and ``lookup_steps`` segments per unit read through a dealt
        one-hot, 1 + order rounds, relative error <= (2 / lookup_steps)**(order + 1):
        1.5e-5 at the default order 1 and 512 steps; its one-hot of width ratio *
        lookup_steps is dealt as DPF keys, ~0.4 KiB a row, one row per head and query) or "newton"
        (``newton_iters`` iterations, 2 rounds each, from a linear fit).
    newton_iters: Newton iterations of 1/d on [1, ratio) ("newton" only).
    direct_steps, direct_max_width: with "lookup", rows of at most N allowed entries
        (a public count) read 1/d on [1, N] from a quadratic table of direct_steps
        segments per unit without range reduction (3 rounds where the reduction takes 5;
        relative error <= (2 / steps)**3, 3.1e-5 at 64) when its width, the power of two
        above (N - 1) * steps + 6, is at most direct_max_width (0: never): an MPCache
        step's or a short context's rows (a one-hot of that width per row, dealt as DPF
        keys of log2(width) x ~16 bytes per party).
    """

    fill: float = -(2.0 ** 12)
    exp: str = "auto"
    exp_lookup_steps: int = 16
    exp_lookup_width: int = 256
    exp_lookup_max_elements: int = 4096
    score_bound_log2: int = 13
    exp_iterations: int = 8
    exp_order: int = 2
    ratio: int = 4
    buckets: int = 9
    reciprocal: str = "lookup"
    lookup_steps: int = 512
    lookup_order: int = 1
    newton_iters: int = 3
    direct_steps: int = 64
    direct_max_width: int = 8192
    dcf_max_elements: int = 4096
    dcf_max_per_row: int = 128

    def __post_init__(self) -> None:
        if not self.fill < 0:
            raise ValueError("fill must be negative")
        if not 1 <= self.score_bound_log2 <= 46 or self.fill <= -(2.0 ** self.score_bound_log2):
            raise ValueError("score_bound_log2 must be in [1, 46] with the fill inside it")
        if self.exp not in ("squaring", "lookup", "auto"):
            raise ValueError(f"exp must be 'squaring', 'lookup' or 'auto', got {self.exp!r}")
        if self.exp_lookup_steps < 6 or self.exp_lookup_width < 13 * self.exp_lookup_steps:
            raise ValueError("exp_lookup_steps must be >= 6 and exp_lookup_width must reach "
                             "exp(-12) (>= 13 x steps)")
        if self.exp_lookup_max_elements < 0:
            raise ValueError("exp_lookup_max_elements must be >= 0")
        if not 1 <= self.exp_iterations <= 12:
            raise ValueError("exp_iterations must be in [1, 12]")
        if self.exp_order not in (1, 2, 3):
            raise ValueError("exp_order must be 1, 2 or 3")
        RangeReduction(1.0, self.ratio, self.buckets)
        if math.log2(self.ratio) * (self.buckets - 1) > 16:
            raise ValueError("ratio**(buckets-1) must be <= 2**16 (fixed-point factor)")
        if self.newton_iters < 1:
            raise ValueError("newton_iters must be >= 1")
        if self.reciprocal not in ("lookup", "newton"):
            raise ValueError(f"reciprocal must be 'lookup' or 'newton', got {self.reciprocal!r}")
        if not 1 <= self.lookup_steps <= 1024 or self.lookup_steps & (self.lookup_steps - 1):
            raise ValueError("lookup_steps must be a power of two in [1, 1024]")
        if self.lookup_order not in (1, 2):
            raise ValueError(f"lookup_order must be 1 or 2, got {self.lookup_order}")
        if self.dcf_max_elements < 0 or self.dcf_max_per_row < 0:
            raise ValueError("dcf_max_elements and dcf_max_per_row must be >= 0")
        if not 6 <= self.direct_steps <= 1024 or self.direct_max_width < 0:
            raise ValueError("direct_steps must be in [6, 1024], direct_max_width >= 0")


def _reciprocal(denom: Any, allowed: int, config: SoftmaxConfig) -> Pending[Any]:
    """1/d for d in [1, allowed], its first opening left to ``openings.run_together``: a
    direct table read where it is narrow enough, else range reduction and a table read
    (or Newton) on [1, ratio). The direct table starts 2 / steps below 1 and reaches past
    ``allowed``, so an index off by -2..+3 stays inside it."""
    steps = config.direct_steps
    width = width_for((allowed - 1) * steps + 6)
    if config.reciprocal == "lookup" and width <= config.direct_max_width:
        return table_reciprocal_pending(denom, 1.0 - 2.0 / steps, steps, width, 2)
    reduction = RangeReduction(1.0, config.ratio, config.buckets)
    lookup = config.lookup_steps if config.reciprocal == "lookup" else None
    return reciprocal_pending(denom, reduction, config.newton_iters, lookup,
                              config.lookup_order)


def dcf_threshold(scores: Any, config: SoftmaxConfig) -> int:
    """The softmax's own hybrid threshold for calls over rows shaped like ``scores``: the
    smaller of ``dcf_max_elements`` and ``dcf_max_per_row`` per row (a public shape)."""
    rows = scores.numel() // max(1, scores.size(-1))
    return min(config.dcf_max_elements, rows * config.dcf_max_per_row)


def _exp(d: Any, config: SoftmaxConfig, dcf_up_to: int) -> Any:
    """exp(d) for the differences d <= 0 (|d| < 2**(score_bound_log2 + 1))."""
    fused = fuses(d.numel(), dcf_up_to)
    table = config.exp == "lookup" or (config.exp == "auto" and fused
                                       and d.numel() <= config.exp_lookup_max_elements)
    if table:
        return lookup_exp_nonpositive(d, config.exp_lookup_steps, config.exp_lookup_width,
                                      config.score_bound_log2 + 2, dcf_up_to)
    return exp_nonpositive(d, config.exp_iterations, config.exp_order)


@dataclass
class SoftmaxParts:
    """A softmax left unnormalized: ``exps`` (masked positions exactly 0) and the
    reciprocal of their row sums, whose first opening waits for ``openings.run_together``.
    Attention normalizes after its values product, (exps V) / sum, so that product opens
    beside the reciprocal's first round instead of after its last."""

    exps: Any
    reciprocal: Pending[Any]


def masked_softmax(scores: Any, mask01: torch.Tensor, dim: int = -1,
                   *, config: SoftmaxConfig = SoftmaxConfig()) -> Any:
    """Softmax over ``dim`` restricted to positions where the PUBLIC ``mask01`` is 1.

    Masked positions are exactly 0. No additive -inf masks: masked scores are replaced by
    a moderate public fill for the max, their differences by 0 for the exp (which is only
    valid above -384), and exps are multiplied by the integer mask.
    """
    with operator_scope("softmax"):
        mask = torch.as_tensor(mask01).to(torch.long)
        if dim not in (-1, scores.dim() - 1):
            mask = mask.expand(scores.size()).transpose(dim, -1)
            scores = scores.transpose(dim, -1)
        parts = masked_softmax_parts(scores, mask, config=config)
        out = parts.exps * open_alone(parts.reciprocal)
        out = mul_public_int(out, mask)
        if dim not in (-1, scores.dim() - 1):
            out = out.transpose(dim, -1)
        return out


def masked_softmax_parts(scores: Any, mask01: torch.Tensor, *,
                         config: SoftmaxConfig = SoftmaxConfig()) -> SoftmaxParts:
    """``masked_softmax`` over the last dim without its normalization (see
    ``SoftmaxParts``)."""
    with operator_scope("softmax"):
        mask = torch.as_tensor(mask01).to(torch.long)
        filled = mul_public_int(scores, mask) + (1 - mask).to(torch.float64) * config.fill
        dcf_up_to = dcf_threshold(filled, config)
        row_max = tournament_max(filled, config.score_bound_log2, dcf_up_to)
        # masked differences become 0 before exp (fill - max would be far outside exp's
        # range: its 2**8 squarings of garbage wrap, harmless but wasted); then exact 0s
        diffs = mul_public_int(filled - row_max, mask)
        exps = mul_public_int(_exp(diffs, config, dcf_up_to), mask)
        denom = exps.sum(-1, keepdim=True)
        allowed = max(1, int(mask.sum(-1).max()))
        return SoftmaxParts(exps, _reciprocal(denom, allowed, config))
