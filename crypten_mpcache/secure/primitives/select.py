"""Compare-and-select of two secret values: in one round where the DCF comparison serves.

The pattern max(a, b) = b + [a >= b] (a - b) costs a comparison and then one
multiplication round for the bit times the difference. With dealt DCF keys whose payload
also carries the mask (``dcf_comparison.negative_part``), the parties get shares of both
z = [d < 0] and z d for d = a - b from the comparison's single opening, so
max(a, b) = a - min(a - b, 0) costs that one round and nothing more: a tournament level,
a bounding-box update or a ReLU in one round instead of two.

Which calls fuse is a public function of the call's size, set with the comparison
protocol (``patches.crypten_comparison.use``): all calls under ``dcf``, calls of at most
``dcf_max_elements`` under ``hybrid`` (the others take the masked comparison and the
multiplication), none under ``masked`` and ``crypten``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crypten_mpcache.secure.primitives import dcf_comparison


@dataclass
class FusedSelect:
    """Calls of at most ``max_elements`` elements fuse (0: none). Process state of the
    comparison protocol, written only by ``patches.crypten_comparison.use``."""

    max_elements: int = 0


FUSED = FusedSelect()


def fuses(numel: int) -> bool:
    """Whether a compare-and-select of ``numel`` elements takes the one-round DCF path."""
    return numel <= FUSED.max_elements


def pair_max(left: Any, right: Any) -> tuple[Any, Any]:
    """([right > left] as scale-1 bits, max(left, right)); ties go to LEFT (its bit is 0).

    Fused: z = [left - right < 0] and min(left - right, 0) from one opening, max =
    left - min(left - right, 0). Otherwise the comparison, then one exact product."""
    difference = left - right
    if fuses(difference.numel()):
        right_wins, negative = dcf_comparison.negative_part(difference)
        return right_wins, left - negative
    right_wins = right.gt(left)
    return right_wins, left + right_wins * (right - left)       # bit times fixed: exact


def relu(x: Any) -> Any:
    """max(x, 0) = x - min(x, 0) (fused) or x [x >= 0] (comparison and product)."""
    if fuses(x.numel()):
        return x - dcf_comparison.negative_part(x)[1]
    return x.ge(0) * x
