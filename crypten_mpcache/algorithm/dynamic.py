"""Query-aware hierarchical cluster selection at every decode step.

Layout of a cache of N tokens (all boundaries public):

    [0, S)                sink tokens, always attended (S = spec.sink)
    [S, S + G1 * s1)      G1 full coarsest clusters that compete
    [S + G1 * s1, N)      recent tokens, always attended (at least spec.recent of them)

With two levels (s1 = 32, s2 = 16) the G1 level-1 clusters are scored and the top k1 kept;
only their children (k1 * s1/s2 level-2 clusters) compete at level 2, and the top k2 are
kept. Forced sink/recent tokens are outside the competing region, so no cluster is ever
counted twice. Every selection is a one-hot matrix (secret under MPC) with rows in
ascending order; tokens are fetched by chained one-hot gathers, so attention runs on
``sink + k2 * s2 + recent`` tokens in their original order.

Counts: in ratio mode k_l = ceil(ratio_l * G_l) (G_l = all level-l clusters of the region),
clamped to the children of the kept parents. In budget mode (tokens attended per step)
k_last = floor((budget - S - recent) / s_last) and the coarser levels keep at least enough
parents for it; in a hierarchy deepened by ``hierarchy`` (``max_candidates`` = M)
at least 1.5 x that (so the level below really chooses) and otherwise at most M / fan
(so the level below chooses among at most M); when sink + recent alone exceed the budget
the oldest recent tokens are left out. A cache no longer than the budget (or, in ratio
mode, without a full competing cluster) is attended densely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from crypten_mpcache.algorithm.backend import Backend, Value, onehot_to_indices
from crypten_mpcache.algorithm.clusters import (
    ClusterState,
    group_queries,
    score_dot,
    score_maxbound,
)
from crypten_mpcache.algorithm.plan import DynamicSpec
from crypten_mpcache.algorithm.torch_backend import TorchBackend


@dataclass(frozen=True)
class StepCounts:
    """Public counts of one decode step's selection."""

    n_tokens: int
    sink: int
    sizes: tuple[int, ...]
    n_top: int
    ks: tuple[int, ...]
    dense: bool
    recent_drop: int = 0  # oldest recent tokens left out when the budget is below them
    shared_heads: bool = False  # one selection per layer (scores summed over KV heads)

    @property
    def recent_start(self) -> int:
        return self.sink + self.n_top * self.sizes[0]

    @property
    def totals(self) -> tuple[int, ...]:
        return tuple(self.n_top * (self.sizes[0] // s) for s in self.sizes)

    @property
    def attended(self) -> int:
        if self.dense:
            return self.n_tokens
        recent = self.n_tokens - self.recent_start - self.recent_drop
        return self.sink + self.ks[-1] * self.sizes[-1] + recent


MARGIN = 1.5  # a deepened hierarchy's level keeps >= 1.5 x the parents the next one needs


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def step_counts(spec: DynamicSpec, n_tokens: int, budget: int | None) -> StepCounts:
    """Derive the public per-step counts from the spec, cache length and token budget."""
    sizes = spec.cluster_sizes
    sink = min(spec.sink, n_tokens)
    n_top = max(0, (n_tokens - sink - spec.recent) // sizes[0])
    dense = n_tokens <= budget if budget is not None else n_top == 0
    shared = spec.scope == "layer"
    if dense:
        return StepCounts(n_tokens, sink, sizes, n_top, (0,) * len(sizes), True,
                          shared_heads=shared)
    totals = [n_top * (sizes[0] // s) for s in sizes]
    fan = [sizes[i] // sizes[i + 1] for i in range(len(sizes) - 1)]
    if budget is None:
        ks = [min(totals[0], max(1, _ceil(spec.keep_ratios[0] * totals[0])))]
        for level in range(1, len(sizes)):
            want = max(1, _ceil(spec.keep_ratios[level] * totals[level]))
            ks.append(min(want, ks[-1] * fan[level - 1]))
    else:
        recent = n_tokens - (sink + n_top * sizes[0])
        drop = min(recent - 1, max(0, sink + recent - budget))
        last = max(0, min(totals[-1], (budget - sink - recent) // sizes[-1])) if n_top else 0
        ks = [last]
        for level in range(len(sizes) - 2, -1, -1):
            need = _ceil(ks[0] / fan[level])
            want = _ceil(spec.keep_ratios[level] * totals[level])
            if spec.max_candidates is not None:  # a real choice below, ~<= M candidates
                choice = _ceil(MARGIN * ks[0] / fan[level])
                want = max(choice, min(want, spec.max_candidates // fan[level]))
            ks.insert(0, 0 if last == 0 else min(totals[level], max(1, need, want)))
        return StepCounts(n_tokens, sink, sizes, n_top, tuple(ks), False, drop, shared)
    return StepCounts(n_tokens, sink, sizes, n_top, tuple(ks), False, shared_heads=shared)


def candidates(counts: StepCounts) -> list[int]:
    """How many candidates each level's top-k competes over (all clusters at the top)."""
    fans = [a // b for a, b in zip(counts.sizes, counts.sizes[1:], strict=False)]
    return [counts.totals[0]] + [k * f for k, f in zip(counts.ks, fans, strict=False)]


OPENED_PER_COMPARISON = 4.0  # a masked comparison sends ~4x the bytes of an opened element


def selection_cost(counts: StepCounts, level_cost: float) -> float:
    """The cost model of ``hierarchy``, in comparisons: the rank top-k's C (C - 1) / 2 per
    level of C candidates, ``level_cost`` per level for its rounds, and the one-hots the
    secure cache opens (composing the levels, premasking the absolute one-hot) at
    1 / ``OPENED_PER_COMPARISON`` comparison per element."""
    if counts.dense or counts.ks[-1] == 0:
        return 0.0
    ks = counts.ks
    opened = ks[-1] * counts.totals[-1] + composition_elements(counts, len(ks))
    return (sum(c * (c - 1) / 2 for c in candidates(counts)) + level_cost * len(ks)
            + opened / OPENED_PER_COMPARISON)


def composition_elements(counts: StepCounts, levels: int) -> int:
    """One-hot elements the secure cache opens composing the first ``levels`` levels'
    one-hots into one absolute one-hot (``secure.cache.selection_operands``): per level,
    its local one-hot split by child slot and the absolute one-hot so far."""
    ks, totals, sizes = counts.ks, counts.totals, counts.sizes
    return sum((sizes[lv - 1] // sizes[lv]) * ks[lv] * ks[lv - 1] + ks[lv - 1] * totals[lv - 1]
               for lv in range(1, levels))


def hierarchy(spec: DynamicSpec, n_tokens: int, budget: int | None) -> DynamicSpec:
    """The hierarchy of a sequence whose cache holds ``n_tokens`` at the end of prefill
    (public), fixed for the sequence; the plaintext mirror and MPC run the same.

    Why: under MPC a top-k over C candidates costs ~C^2 / 2 comparisons (rank protocol)
    and the composed one-hot grows with the coarsest level, so a hierarchy tuned at 2k-4k
    grows quadratically at 16k. With ``spec.max_candidates`` = M, a budget and at least
    two levels, when the coarsest level would hold more than M full clusters this weighs
    the configured hierarchy against 1, 2, ... levels ``growth`` times coarser on top
    (up to one more than it takes to bring the top to M; an option whose coarser top
    forces so many recent tokens that under 2/3 of the budget's chosen tokens are left is
    out) by ``selection_cost``: a level costs ``spec.level_cost`` comparisons for its
    rounds (the default prices ~11 rounds on the LAN profile; ~173k prices them on the
    WAN one). In a deepened hierarchy
    ``step_counts`` keeps at most M / fan of a level's clusters (unless the budget needs
    more) and at least 1.5 x what the level below needs. Up to M coarsest clusters the
    configured hierarchy is kept as it is, so short contexts select exactly as before.
    """
    configured = spec.deepened(0)
    region = n_tokens - min(spec.sink, n_tokens) - spec.recent
    if (spec.max_candidates is None or budget is None or len(spec.cluster_sizes) < 2
            or region // spec.cluster_sizes[0] <= spec.max_candidates):
        return configured
    needed = 0
    while region // (spec.cluster_sizes[0] * spec.growth ** needed) > spec.max_candidates:
        needed += 1
    base = step_counts(configured, n_tokens, budget)
    options = [configured]
    for depth in range(1, needed + 2):
        option = spec.deepened(depth)
        counts = step_counts(option, n_tokens, budget)
        # a coarser top forces up to its size - 1 more recent tokens: keep >= 2/3 chosen
        if 3 * counts.ks[-1] * counts.sizes[-1] >= 2 * base.ks[-1] * base.sizes[-1] > 0:
            options.append(option)
    return min(options, key=lambda s: selection_cost(step_counts(s, n_tokens, budget),
                                                     s.level_cost))


def descend(backend: Backend, grouped: Value, onehots: list[Value], sizes: tuple[int, ...],
            unit: int) -> Value:
    """Apply a chain of selections to data grouped by coarsest cluster ``(B, H, G1, W)``.

    After selection i the kept rows are split into their children (factor
    sizes[i] / sizes[i+1]; the last split uses ``unit``, the per-finest-cluster width
    divisor), so the next selection indexes candidates in ascending order.
    """
    x = grouped
    for i, onehot in enumerate(onehots):
        x = backend.gather(onehot, x)
        batch, heads, kept, width = x.shape
        factor = sizes[i] // sizes[i + 1] if i + 1 < len(sizes) else unit
        x = x.reshape(batch, heads, kept * factor, width // factor)
    return x


def _level_data(level_tensor: Value, counts: StepCounts, level: int) -> Value:
    """A level's per-cluster tensor ``(B, H, G_l, D)`` grouped by coarsest cluster."""
    batch, heads, _, dim = level_tensor.shape
    total = counts.totals[level]
    per_top = total // counts.n_top
    return level_tensor[..., :total, :].reshape(batch, heads, counts.n_top, per_top * dim)


def select(backend: Backend, query: Value, state: ClusterState, counts: StepCounts,
           similarity: str, level_scores: Callable[[int], Value] | None = None
           ) -> list[Value]:
    """Local one-hot selections per level (level l indexes the children of level l-1).

    Rows come in the top-k protocol's cheapest order (``ordered=False``): attention over
    the gathered tokens does not depend on their order, and every later level indexes the
    candidates through the same one-hots, so the selected SET is all that matters.

    ``level_scores(l)``, when given, returns the scores ``(B, H, C_l)`` of ALL full
    level-l clusters (C_l >= G_l; e.g. products with premasked representatives); the
    candidates' scores are then picked by the same chain of one-hots that would pick
    their boxes. Same selection: every score depends on its own cluster only.
    """
    if counts.dense or counts.ks[-1] == 0:
        return []
    n_kv = state.finest.rmax.shape[1]
    grouped_q = group_queries(query, n_kv)
    onehots: list[Value] = []
    for level, boxes in enumerate(state.levels):
        if level_scores is not None:
            scores = _shared(backend, level_scores(level), counts)
            scores = candidate_scores(backend, scores, onehots, counts, level)
            onehots.append(backend.topk_onehot(scores, counts.ks[level], ordered=False))
            continue
        fetch = lambda t, lv=level: descend(  # noqa: B023 - evaluated immediately
            backend, _level_data(t, counts, lv), onehots, counts.sizes, 1)
        if similarity == "maxbound":
            scores = score_maxbound(backend, grouped_q, fetch(boxes.rmax), fetch(boxes.rmin))
        else:
            scores = score_dot(backend, grouped_q, fetch(boxes.rep))
        onehots.append(backend.topk_onehot(_shared(backend, scores, counts), counts.ks[level],
                                           ordered=False))
    return onehots


def _shared(backend: Backend, scores: Value, counts: StepCounts) -> Value:
    """``(B, H, G)`` -> ``(B, 1, G)`` summed over KV heads when the layer selects once."""
    return backend.sum(scores, dim=1, keepdim=True) if counts.shared_heads else scores


def candidate_scores(backend: Backend, scores: Value, onehots: list[Value],
                     counts: StepCounts, level: int) -> Value:
    """Scores ``(B, H, C_l)`` of all full level-l clusters -> ``(B, H, candidates)``:
    the children of the clusters kept by ``onehots`` (all of them at level 0)."""
    grouped = _level_data(scores.unsqueeze(-1), counts, level)
    return descend(backend, grouped, onehots, counts.sizes, 1)[..., 0]


def gather_tokens(backend: Backend, x: Value, onehots: list[Value], counts: StepCounts) -> Value:
    """``x (B, H, N, D)`` -> attended rows ``(B, H, counts.attended, D)`` in original order."""
    if counts.dense:
        return x
    batch, heads, _, dim = x.shape
    parts = [x[..., : counts.sink, :]]
    if counts.ks[-1] > 0:
        region = x[..., counts.sink: counts.recent_start, :]
        grouped = region.reshape(batch, heads, counts.n_top, counts.sizes[0] * dim)
        picked = descend(backend, grouped, onehots, counts.sizes, counts.sizes[-1])
        parts.append(picked.reshape(batch, heads, counts.ks[-1] * counts.sizes[-1], dim))
    parts.append(x[..., counts.recent_start + counts.recent_drop:, :])
    return backend.cat(parts, dim=-2)


def finest_clusters(backend: Backend, onehots: list[Value], counts: StepCounts) -> torch.Tensor:
    """Plaintext (debug): absolute finest-level cluster indices kept, ``(B, H, k_last)``."""
    absolute = None
    for level, onehot in enumerate(onehots):
        local = onehot_to_indices(backend.reveal(onehot))
        if absolute is None:
            absolute = local
        else:
            fan = counts.sizes[level - 1] // counts.sizes[level]
            parent = torch.gather(absolute, -1, local // fan)
            absolute = parent * fan + local % fan
    if absolute is None or counts.ks[-1] == 0:
        return torch.zeros(0, dtype=torch.long)
    return absolute.sort(dim=-1).values  # a set: row order is the protocol's business


def attended_positions(backend: Backend, onehots: list[Value], counts: StepCounts,
                       batch: int, heads: int) -> torch.Tensor:
    """Plaintext (debug): cache indices attended this step, ``(B, H, attended)``."""
    index = torch.arange(counts.n_tokens, dtype=torch.float32)
    index = index.view(1, 1, -1, 1).expand(batch, heads, -1, 1)
    revealed = [backend.reveal(o).float() for o in onehots]
    picked = gather_tokens(TorchBackend(), index, revealed, counts)
    return picked[..., 0].round().long()
