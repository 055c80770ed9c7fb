"""Secure top-k protocols with a PUBLIC k over secret scores (..., G).

Every protocol returns a secret one-hot selection matrix (..., k, G) whose row r selects
the r-th chosen item IN ASCENDING ORIGINAL INDEX ORDER (gathering with it keeps token
order). Nothing is revealed and every shape, and so the transcript, depends on (G, k)
only.

Tie rule (all protocols): items are ranked by (score descending, index ascending), i.e. on
equal scores the LOWER index wins. On distinct scores this is exactly torch.topk's set.

Protocols
- ``iterative``: k rounds of a tournament argmax (lowest index wins ties), each winner
  pushed below every score by a public offset (no multiplication needed).
  k (G - 1) comparisons in k ceil(log2 G) comparison rounds.
- ``rank``: rank_i = #{j: s_j > s_i or (s_j == s_i and j < i)} from the G (G - 1) / 2
  comparisons of the pairs i < j (one round), selected = [rank < k] (one round).
  Constant rounds, G^2 / 2 comparisons.
- ``network``: scores made distinct (exactly, in the ring) by s * 2^b + (G - 1 - i) raw
  units, bitonic sort of blocks of k' = 2^ceil(log2 k), then pairwise "keep the top k'"
  bitonic merges; the k-th largest is the threshold, selected = [s' >= threshold].
  ~G log^2 k' comparisons, log^2 k' + log(G / k') log k' rounds.
Where row order does not matter (dynamic selection: a gather, then attention over the
rows) ``ordered=False`` returns rows in rank order instead: ``rank`` then reads
onehot[r, i] = [rank_i == r] off a dealt unit vector (``primitives.onehot``: one opened word
per item and one round, no second comparison round), ``iterative`` its winners as they
come. Otherwise each builds the
ordered one-hot from the inclusive prefix count c = cumsum(selected):
a[r, i] = [c_i >= r + 1] (k G comparisons on small integers, one round) and
onehot[r, i] = a[r, i] - a[r, i - 1]: the first index where the count reaches r + 1 is
the (r + 1)-th selected item. ``topk_mask`` skips that step and returns the (..., G) bits.

Costs are charged to ``operator_scope("topk")``; ``functions.topk_cost`` predicts them
and picks a protocol.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import crypten
import torch

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.functions.tournament import expand_winner, tournament
from crypten_mpcache.secure.primitives.fixed_point import fixed_scale, mul_public_int, to_fixed
from crypten_mpcache.secure.primitives.onehot import onehot, width_for
from crypten_mpcache.secure.primitives.select import difference_bound, less_than_zero

PROTOCOLS = ("iterative", "rank", "network")

# --------------------------------------------------------------------------- shared steps


def _check(scores: Any, k: int) -> int:
    g = scores.size(-1)
    if not 1 <= k <= g:
        raise ValueError(f"k must be in [1, {g}], got {k}")
    return g


def ordered_onehot(selected: Any, k: int) -> Any:
    """(..., k, G) scale-1 one-hot of the selected items in ascending index order.

    ``selected``: scale-1 bits (..., G) with exactly k ones.
    """
    counts = selected.cumsum(-1)                                     # inclusive, 0..k
    thresholds = torch.arange(1, k + 1, dtype=torch.float64).unsqueeze(-1)
    reached = counts.unsqueeze(-2).ge(thresholds)                   # (..., k, G) bits
    zero = reached[..., :1] * 0
    before = crypten.cat([zero, reached[..., :-1]], dim=-1)
    return reached - before


def _iterative_winners(scores: Any, k: int) -> list[Any]:
    """k tournament argmaxes (scale-1 one-hots, best first); each winner is pushed below
    every score by a public offset before the next tournament."""
    offset = _push_down_offset(scores)
    current, winners = scores, []
    for _ in range(k):
        _, levels = tournament(current)
        winner = expand_winner(levels, current)
        winners.append(winner)
        current = current - winner * offset                         # public product: local
    return winners


def _iterative_mask(scores: Any, k: int) -> Any:
    """Selection bits: the sum of the k winners."""
    selected = _iterative_winners(scores, k)
    return sum(selected[1:], selected[0])


def _push_down_offset(scores: Any) -> int:
    """A public integer larger than any score spread we support (2**24)."""
    del scores
    return 2 ** 24


def _pair_indices(g: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.triu_indices(g, g, offset=1)


def _rank_mask(scores: Any, k: int, bound_log2: int | None = None) -> Any:
    """[rank < k] with rank from all pairs i < j compared once, in one round."""
    return (_rank(scores, bound_log2) - k)._ltz()


def _rank_onehot(scores: Any, k: int, bound_log2: int | None = None) -> Any:
    """(..., k, G) rows [rank_i == r], r = 0..k-1: the best k in RANK order. The rank is a
    permutation of 0..G-1 under the tie rule (so each row has one 1), a scale-1 integer
    below W = width_for(G): its one-hot is one opening against a dealt unit vector."""
    rank = _rank(scores, bound_log2)
    return onehot(rank, width_for(scores.size(-1)), count=k).transpose(-1, -2)


def _iterative_onehot(scores: Any, k: int) -> Any:
    """(..., k, G): the k tournament winners in the order they won (rank order)."""
    return crypten.stack(_iterative_winners(scores, k), dim=-2)


def _rank(scores: Any, bound_log2: int | None = None) -> Any:
    """Rank of each item (0 = best; ties: lower index first) as scale-1 integers.
    ``bound_log2``: every |score| < 2^bound_log2 (narrower DCF keys for the pairs)."""
    g = scores.size(-1)
    first, second = _pair_indices(g)
    left = scores.index_select(-1, first)
    right = scores.index_select(-1, second)
    first_wins = 1 - less_than_zero(left - right, difference_bound(bound_log2))  # ties: lower
    # rank_j += [i beats j]; rank_i += 1 - [i beats j]  =>  rank = P @ (M_j - M_i) + (G-1-i)
    incidence = torch.zeros(first.numel(), g, dtype=torch.long)
    incidence[torch.arange(first.numel()), second] += 1
    incidence[torch.arange(first.numel()), first] -= 1
    later = torch.arange(g - 1, -1, -1, dtype=torch.long)
    return first_wins.matmul(incidence) + later                      # scale-1 integers


# --------------------------------------------------------------------------- network


def _distinct(scores: Any) -> Any:
    """s * 2**b + (G - 1 - i) raw units: exact, order-preserving, lower index wins ties."""
    g = scores.size(-1)
    b = max(1, math.ceil(math.log2(g)))
    tie = torch.arange(g - 1, -1, -1, dtype=torch.float64) / fixed_scale()
    return mul_public_int(scores, torch.tensor(2 ** b)) + tie     # raw units: exact


def _compare_exchange(values: Any, lo: torch.Tensor, hi: torch.Tensor,
                      descending: torch.Tensor) -> Any:
    """One network layer: for each pair (lo, hi) put the max first where ``descending``."""
    a = values.index_select(-1, lo)
    b = values.index_select(-1, hi)
    a_wins = a.ge(b)
    big = b + a_wins * (a - b)
    small = a + b - big
    first = small + mul_public_int(big - small, descending.to(torch.long))  # exact
    second = big + small - first
    order = torch.empty(values.size(-1), dtype=torch.long)
    order[lo] = torch.arange(lo.numel())
    order[hi] = torch.arange(lo.numel()) + lo.numel()
    return crypten.cat([first, second], dim=-1).index_select(-1, order)


def _bitonic_sort_stages(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Layers of a bitonic network sorting n (a power of two) values descending."""
    idx = torch.arange(n)
    stages = []
    size = 2
    while size <= n:
        stride = size // 2
        while stride >= 1:
            lo = idx[(idx & stride) == 0]
            hi = lo + stride
            stages.append((lo, hi, (lo & size) == 0))
            stride //= 2
        size *= 2
    return stages


def _bitonic_merge_stages(n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Layers turning a bitonic sequence of n values into a descending one."""
    idx = torch.arange(n)
    stages = []
    stride = n // 2
    while stride >= 1:
        lo = idx[(idx & stride) == 0]
        stages.append((lo, lo + stride, torch.ones(lo.numel(), dtype=torch.bool)))
        stride //= 2
    return stages


def _blockwise(stages: list, blocks: int, width: int) -> list:
    """Repeat per-block layers over ``blocks`` consecutive blocks of ``width``."""
    out = []
    for lo, hi, desc in stages:
        offs = (torch.arange(blocks) * width).unsqueeze(1)
        out.append(((lo + offs).flatten(), (hi + offs).flatten(), desc.repeat(blocks)))
    return out


def _kth_largest(values: Any, k: int) -> Any:
    """The k-th largest of distinct values (..., G) by a bitonic top-k selection network."""
    g = values.size(-1)
    width = 1 << max(0, math.ceil(math.log2(k)))
    blocks = 1 << max(0, math.ceil(math.log2(math.ceil(g / width))))
    padded = blocks * width
    if padded > g:  # pad with public values below every score, distinct among themselves
        pad_values = -(2.0 ** 40) - torch.arange(padded - g, dtype=torch.float64)
        pad = values[..., :1] * 0 + pad_values.expand(*values.size()[:-1], padded - g)
        values = crypten.cat([values, pad], dim=-1)
    for lo, hi, desc in _blockwise(_bitonic_sort_stages(width), blocks, width):
        values = _compare_exchange(values, lo, hi, desc)
    while blocks > 1:
        # keep the top ``width`` of each pair of sorted blocks: a bitonic sequence, merged
        shaped = values.reshape(*values.size()[:-1], blocks // 2, 2, width)
        first = shaped[..., 0, :]
        second = shaped[..., 1, :].index_select(-1, torch.arange(width - 1, -1, -1))
        first_wins = first.ge(second)
        values = (second + first_wins * (first - second)).flatten(-2)
        blocks //= 2
        for lo, hi, desc in _blockwise(_bitonic_merge_stages(width), blocks, width):
            values = _compare_exchange(values, lo, hi, desc)
    return values[..., k - 1:k]


def _network_mask(scores: Any, k: int) -> Any:
    distinct = _distinct(scores)
    threshold = _kth_largest(distinct, k)
    return distinct.ge(threshold)


# --------------------------------------------------------------------------- public API

_MASKS = {"iterative": _iterative_mask, "rank": _rank_mask, "network": _network_mask}


def _bounded(table: dict, bound_log2: int | None) -> dict:
    """The protocols with ``rank`` comparing at the scores' bound (the others compare
    pushed-down or distinct-ified scores, beyond it, at full width)."""
    return dict(table, rank=partial(table["rank"], bound_log2=bound_log2))


def topk_mask(scores: Any, k: int, protocol: str = "rank",
              bound_log2: int | None = None) -> Any:
    """Secret (..., G) 0/1 bits (fixed-point encoded) of the k best items (tie rule above);
    ``bound_log2``: every |score| < 2^bound_log2."""
    _check(scores, k)
    if protocol not in _MASKS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    with operator_scope("topk"):
        return to_fixed(_bounded(_MASKS, bound_log2)[protocol](scores, k))


_UNORDERED = {"iterative": _iterative_onehot, "rank": _rank_onehot}


def topk_onehot(scores: Any, k: int, protocol: str = "rank", ordered: bool = True,
                bound_log2: int | None = None) -> Any:
    """Secret (..., k, G) one-hot rows selecting the top k in ascending index order.

    ``ordered=False``: rows in rank order (best first) for ``rank`` and ``iterative``,
    which skips a comparison round (rank) or the whole ordering step (iterative); for a
    consumer to which row order means nothing (a gather then a softmax over the rows).
    ``network`` has no rank order and always returns index order. ``bound_log2``: every
    |score| < 2^bound_log2.
    """
    _check(scores, k)
    if protocol not in _MASKS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    with operator_scope("topk"):
        if not ordered and protocol in _UNORDERED:
            return to_fixed(_bounded(_UNORDERED, bound_log2)[protocol](scores, k))
        return to_fixed(ordered_onehot(_bounded(_MASKS, bound_log2)[protocol](scores, k), k))
