"""Max and argmax over the last dim by a tournament of adjacent pairs (lowest index wins ties).

``argmax_onehot`` is charged to ``operator_scope("argmax")``; the tournament itself is
charged to whichever operator calls it (softmax's row max, top-k's iterative protocol).
"""

from __future__ import annotations

from typing import Any

import crypten

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.primitives.fixed_point import to_fixed
from crypten_mpcache.secure.primitives.select import difference_bound, pair_max


def tournament(x: Any, bound_log2: int | None = None, dcf_up_to: int | None = None
               ) -> tuple[Any, list[tuple[Any, int]]]:
    """Max over the last dim by a tournament of ADJACENT pairs, keeping each level's bits.
    ``bound_log2``: every |x| < 2^bound_log2 (so pair differences < 2^(bound_log2 + 1));
    ``dcf_up_to``: under ``hybrid``, levels of at most this many elements (rows x pairs)
    take DCF keys, the others the masked comparison (``select.fuses``; None: the
    protocol's threshold).

    Adjacent pairing keeps every node's index range contiguous with the left node holding
    the lower indices, so "right wins only if strictly greater" gives ties to the lowest
    index. ceil(log2 n) levels of comparisons, n - 1 comparisons in all; a level is one
    round where the comparison fuses the select (``primitives.select``), else two.
    """
    levels: list[tuple[Any, int]] = []  # ([right > left] scale-1 bits, pairs) per level
    values = x
    while values.size(-1) > 1:
        n = values.size(-1)
        pairs = n // 2
        left = values[..., 0:2 * pairs:2]
        right = values[..., 1:2 * pairs:2]
        right_wins, winners = pair_max(left, right, difference_bound(bound_log2), dcf_up_to)
        values = crypten.cat([winners, values[..., 2 * pairs:]], dim=-1) if n % 2 else winners
        levels.append((right_wins, pairs))
    return values, levels


def tournament_max(x: Any, bound_log2: int | None = None, dcf_up_to: int | None = None
                   ) -> Any:
    """Max over the last dim (keepdim), n - 1 comparisons in ceil(log2 n) rounds."""
    return tournament(x, bound_log2, dcf_up_to)[0]


def expand_winner(levels: list[tuple[Any, int]], like: Any) -> Any:
    """Walk the tournament back down: one exact scale-1 multiplication round per level."""
    weights = None
    for right_wins, pairs in reversed(levels):
        if weights is None:                                  # the final: a single pair
            weights = crypten.stack([1 - right_wins, right_wins], dim=-1).flatten(-2)
            continue
        paired = weights[..., :pairs]
        right_part = paired * right_wins
        expanded = crypten.stack([paired - right_part, right_part], dim=-1).flatten(-2)
        if weights.size(-1) > pairs:                         # the odd element passed through
            expanded = crypten.cat([expanded, weights[..., pairs:]], dim=-1)
        weights = expanded
    if weights is None:                                      # a single element
        weights = like._ltz() * 0 + 1
    return weights


def tournament_argmax(x: Any, bound_log2: int | None = None) -> tuple[Any, Any]:
    """(max keepdim, scale-1 one-hot) over the last dim; ties go to the LOWEST index."""
    values, levels = tournament(x, bound_log2)
    return values, expand_winner(levels, x)


def argmax_onehot(x: Any, dim: int = -1, bound_log2: int | None = None) -> Any:
    """Secret one-hot of the maximum along ``dim`` (exactly one 1; lowest index on ties);
    ``bound_log2``: every |x| < 2^bound_log2."""
    with operator_scope("argmax"):
        moved = dim not in (-1, x.dim() - 1)
        if moved:
            x = x.transpose(dim, -1)
        _, onehot = tournament_argmax(x, bound_log2)
        onehot = to_fixed(onehot)
        return onehot.transpose(dim, -1) if moved else onehot
