"""Compare-and-select of two secret values in the comparison's own rounds.

The pattern max(a, b) = b + [a >= b] (a - b) costs a comparison and then one
multiplication round for the bit times the difference. With dealt DCF keys whose payload
also carries the mask (``dcf_comparison.negative_part``), the parties get shares of both
z = [d < 0] and z d for d = a - b from the comparison's single opening, so
max(a, b) = a - min(a - b, 0) costs that one round and nothing more: a tournament level,
a bounding-box update or a ReLU in one round instead of two. The masked comparison does
the same from a dealt rho r (``comparison.negative_part``): its 7 or 8 rounds, no 9th.

Which calls fuse is a public function of the call's size, set with the comparison
protocol (``patches.crypten_comparison.use``): all calls under ``dcf``, calls of at most
``dcf_max_elements`` under ``hybrid`` (the others take the masked comparison's select),
none under ``masked`` (its select) and ``crypten`` (a comparison and a product). Under
``hybrid`` an operator may set its own calls' threshold (``dcf_up_to``: the softmax's,
wider than the protocol's for a short context's few rows, whose keys save the most rounds
per dealt byte, and bounded per row so that a long context's keys stop growing with it;
``SoftmaxConfig``).

Bit widths: a caller that knows |x| < 2^B (real units) passes ``bound_log2=B``; the
comparison then compares B + 16 bits instead of 63 (the sign of x is bit B + 16 of
x mod 2^(B + 17) when the raw x lies in [-2^(B+16), 2^(B+16))): the DCF keys' bytes
shrink in proportion, and the masked comparison (calls that do not fuse, under
``masked`` and ``hybrid``) runs a tree over 32 positions, not 64: one round and half its
dealt triples fewer. Outside the bound the sign would be wrong, so each bound is a
documented range of its caller (docs/fss.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crypten_mpcache.secure.primitives import comparison as masked_comparison
from crypten_mpcache.secure.primitives import dcf_comparison
from crypten_mpcache.secure.primitives.fixed_point import fixed_scale
from crypten_mpcache.secure.primitives.openings import Pending, nothing_to_open


@dataclass
class FusedSelect:
    """Calls of at most ``max_elements`` elements fuse (0: none); the others take the masked
    comparison at the caller's width when ``masked_above`` (else ``x._ltz()``); where
    ``caller_threshold`` (hybrid), a caller's own ``dcf_up_to`` replaces ``max_elements``.
    Process state of the comparison protocol, written only by
    ``patches.crypten_comparison.use``."""

    max_elements: int = 0
    masked_above: bool = False
    caller_threshold: bool = False


FUSED = FusedSelect()


def fuses(numel: int, dcf_up_to: int | None = None) -> bool:
    """Whether a compare-and-select of ``numel`` elements takes the one-round DCF path:
    up to the protocol's threshold, or, under ``hybrid``, up to the caller's own
    ``dcf_up_to`` where it gives one (wider or narrower; ``dcf`` always fuses, ``masked``
    and ``crypten`` never do)."""
    if dcf_up_to is None or not FUSED.caller_threshold:
        return numel <= FUSED.max_elements
    return numel <= dcf_up_to


def compared_bits(bound_log2: int | None) -> int:
    """Bits a comparison compares for |x| < 2^bound_log2 at the fixed-point scale (63: no
    bound): the DCF's tree levels, the masked comparison's positions."""
    if bound_log2 is None:
        return dcf_comparison.BITS
    if bound_log2 < 1:
        raise ValueError(f"bound_log2 must be >= 1, got {bound_log2}")
    return min(dcf_comparison.BITS, bound_log2 + fixed_scale().bit_length() - 1)


def difference_bound(bound_log2: int | None) -> int | None:
    """The bound of a - b when |a|, |b| < 2^bound_log2 (None: no bound)."""
    return None if bound_log2 is None else bound_log2 + 1


def pair_max(left: Any, right: Any, bound_log2: int | None = None,
             dcf_up_to: int | None = None) -> tuple[Any, Any]:
    """([right > left] as scale-1 bits, max(left, right)); ties go to LEFT (its bit is 0).
    ``bound_log2``: |left - right| < 2^bound_log2 (narrower keys, see above); ``dcf_up_to``:
    see ``fuses``.

    Fused: z = [left - right < 0] and min(left - right, 0) from one opening, max =
    left - min(left - right, 0). Otherwise the comparison, then one exact product."""
    difference = left - right
    if fuses(difference.numel(), dcf_up_to):
        right_wins, negative = dcf_comparison.negative_part(difference,
                                                            compared_bits(bound_log2))
        return right_wins, left - negative
    if FUSED.masked_above:
        right_wins, negative = masked_comparison.negative_part(difference,
                                                               compared_bits(bound_log2))
        return right_wins, left - negative
    right_wins = less_than_zero(difference, bound_log2)
    return right_wins, left - right_wins * difference           # bit times fixed: exact


def less_than_zero(x: Any, bound_log2: int | None = None) -> Any:
    """[x < 0] as scale-1 bits: the DCF comparison at the bound's width where calls fuse,
    the masked one at the bound's width where ``masked_above``, else the configured
    protocol's own (``x._ltz()``)."""
    if fuses(x.numel()):
        return dcf_comparison.less_than_zero(x, compared_bits(bound_log2))
    if FUSED.masked_above:
        return masked_comparison.less_than_zero(x, compared_bits(bound_log2))
    return x._ltz()


def less_than_zero_pending(x: Any, bound_log2: int | None = None) -> Pending[Any]:
    """``less_than_zero`` with its first opening left to ``openings.open_together`` (under
    ``crypten`` the comparison runs whole after the others' opening)."""
    if fuses(x.numel()):
        return dcf_comparison.less_than_zero_pending(x, compared_bits(bound_log2))
    if FUSED.masked_above:
        return masked_comparison.less_than_zero_pending(x, compared_bits(bound_log2))
    return nothing_to_open(x._ltz)


def negative_part_pending(x: Any, bound_log2: int | None = None) -> Pending[tuple[Any, Any]]:
    """([x < 0] as scale-1 bits, min(x, 0) = [x < 0] x) with the comparison's first opening
    left to ``openings.open_together``: the select in the comparison's own rounds where
    calls fuse or ``masked_above``; under ``crypten`` a comparison, then a product."""
    bits = compared_bits(bound_log2)
    if fuses(x.numel()):
        return dcf_comparison.negative_part_pending(x, bits)
    if FUSED.masked_above:
        return masked_comparison.negative_part_pending(x, bits)
    def compare_then_select() -> tuple[Any, Any]:
        negative = x._ltz()
        return negative, negative * x

    return nothing_to_open(compare_then_select)


def relu(x: Any, bound_log2: int | None = None, dcf_up_to: int | None = None) -> Any:
    """max(x, 0) = x - min(x, 0) (fused) or x - x [x < 0] (comparison and product);
    ``dcf_up_to``: see ``fuses``."""
    if fuses(x.numel(), dcf_up_to):
        return x - dcf_comparison.negative_part(x, compared_bits(bound_log2))[1]
    if FUSED.masked_above:
        return x - masked_comparison.negative_part(x, compared_bits(bound_log2))[1]
    return x - less_than_zero(x, bound_log2) * x
