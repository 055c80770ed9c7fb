"""Cluster bounding boxes and cluster scores.

The cache after the first ``start`` (sink) tokens is cut into contiguous clusters of
fixed size at every level (boundaries at ``start + i * size``). For each FULL cluster we
keep the per-dimension max and min of its keys (a bounding box) and its representative:
``alpha * r_max + (1 - alpha) * r_min`` ("linear", MPCache) or the mean key ("mean",
InfLLM-like). A cluster's box and representative are computed ONCE, at the step its last
key arrives (``Backend.box``: ~1.5 comparisons per key element under MPC). The still
filling finest cluster is never scored (it lies in the forced recent window), so keeping
a running box for it (2 comparisons per element at every step) would be wasted work: its
keys are only buffered. Coarser boxes are built from their children the moment the last
child is full.

Scores per KV head sum the scores of the query heads that share it. The linear score is
ONE inner product per cluster: sum_g q_g . rep = (sum_g q_g) . rep. The max-bound score
sum_i max(q_i r_max_i, q_i r_min_i) is the exact max of q.k over the box corners (Quest);
it costs comparisons and is kept for the ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypten_mpcache.algorithm.backend import Backend, Value

# The end-of-prefill boxes are built in batches of at most this many tokens: under MPC a
# batch's comparisons hold ~1 KB per key element at once (~9 GB for 16k tokens of a
# Llama-3-8B layer); longer caches take one box round trip more per batch.
BUILD_CHUNK_TOKENS = 16_384


@dataclass
class LevelBoxes:
    """Boxes of the full clusters of one level; ``count`` is public."""

    size: int
    rmax: Value | None = None
    rmin: Value | None = None
    rep: Value | None = None
    count: int = 0

    def append(self, backend: Backend, rmax: Value, rmin: Value, rep: Value) -> None:
        """Add the boxes of newly full clusters (along the cluster dim, -2)."""
        if self.count:
            self.rmax = backend.cat([self.rmax, rmax], dim=-2)
            self.rmin = backend.cat([self.rmin, rmin], dim=-2)
            self.rep = backend.cat([self.rep, rep], dim=-2)
        else:
            self.rmax, self.rmin, self.rep = rmax, rmin, rep
        self.count += rmax.shape[-2]


class ClusterState:
    """Per-layer boxes for every level plus the filling finest cluster (incremental)."""

    def __init__(self, backend: Backend, sizes: tuple[int, ...], start: int, alpha: float,
                 similarity: str) -> None:
        self.backend = backend
        self.start = start
        self.alpha = alpha
        self.similarity = similarity
        self.levels = [LevelBoxes(size) for size in sizes]
        self.tokens = 0
        self._filling: list[Value] = []  # keys (B, H, 1, D) of the filling finest cluster

    @property
    def finest(self) -> LevelBoxes:
        return self.levels[-1]

    def _representative(self, rmax: Value, rmin: Value, total: Value | None, size: int) -> Value:
        b = self.backend
        if self.similarity == "mean":
            return b.scale(total, 1.0 / size)
        return b.add(b.scale(rmax, self.alpha), b.scale(rmin, 1.0 - self.alpha))

    def build(self, keys: Value) -> None:
        """Initialise from a whole cache ``keys (B, H, N, D)`` (end of prefill)."""
        batch, heads, n, dim = keys.shape
        self.tokens = n
        region = max(0, n - self.start)
        size = self.finest.size
        full = region // size
        step = max(1, BUILD_CHUNK_TOKENS // size)  # boxes are per cluster: same result
        for first in range(0, full, step):
            count = min(step, full - first)
            lo = self.start + first * size
            chunk = keys[..., lo: lo + count * size, :]
            self._append_chunk(chunk.reshape(batch, heads, count, size, dim))
        self._filling = [keys[..., pos: pos + 1, :] for pos in range(self.start + full * size, n)]

    def append(self, key: Value) -> None:
        """Account for one new key ``(B, H, 1, D)`` at the end of the cache."""
        self.tokens += 1
        if self.tokens <= self.start:
            return
        self._filling.append(key)
        if len(self._filling) == self.finest.size:
            chunk = self.backend.cat(self._filling, dim=-2).unsqueeze(2)  # (B, H, 1, size, D)
            self._filling = []
            self._append_chunk(chunk)

    def _append_chunk(self, chunk: Value) -> None:
        """Boxes of whole finest clusters ``(B, H, C, size, D)``."""
        b = self.backend
        rmax, rmin = b.box(chunk, dim=3)
        self._append_finest(rmax, rmin, b.sum(chunk, dim=3) if self.similarity == "mean" else None)

    def _append_finest(self, rmax: Value, rmin: Value, total: Value | None) -> None:
        level = self.finest
        level.append(self.backend, rmax, rmin,
                     self._representative(rmax, rmin, total, level.size))
        self._grow_coarse_levels()

    def _grow_coarse_levels(self) -> None:
        """Build boxes of coarse clusters whose children are now all full."""
        b = self.backend
        fine = self.finest
        batch, heads, _, dim = fine.rmax.shape
        for level in self.levels[:-1]:
            ratio = level.size // fine.size
            target = fine.count // ratio
            if target <= level.count:
                continue
            lo, hi = level.count * ratio, target * ratio
            groups = target - level.count
            kids_max = fine.rmax[..., lo:hi, :].reshape(batch, heads, groups, ratio, dim)
            kids_min = fine.rmin[..., lo:hi, :].reshape(batch, heads, groups, ratio, dim)
            rmax, rmin = b.max_min(kids_max, kids_min, dim=3)
            total = None
            if self.similarity == "mean":
                kids_rep = fine.rep[..., lo:hi, :].reshape(batch, heads, groups, ratio, dim)
                total = b.scale(b.sum(kids_rep, dim=3), float(fine.size))
            level.append(b, rmax, rmin, self._representative(rmax, rmin, total, level.size))


def group_queries(query: Value, n_kv_heads: int) -> Value:
    """``(B, Hq, 1, D)`` decode query -> ``(B, Hkv, g, D)`` grouped by KV head."""
    batch, hq, _, dim = query.shape
    return query.reshape(batch, n_kv_heads, hq // n_kv_heads, dim)


def score_dot(backend: Backend, grouped_q: Value, rep: Value) -> Value:
    """Linear / mean score ``(B, Hkv, G)``: one inner product per cluster and KV head."""
    q_sum = backend.sum(grouped_q, dim=2, keepdim=True)  # (B, Hkv, 1, D)
    return backend.matmul(q_sum, rep.transpose(-1, -2))[..., 0, :]


def score_maxbound(backend: Backend, grouped_q: Value, rmax: Value, rmin: Value) -> Value:
    """Exact upper bound of q.k over each box, summed over the group: ``(B, Hkv, G)``."""
    q = grouped_q.unsqueeze(-2)  # (B, Hkv, g, 1, D)
    hi = backend.mul(q, rmax.unsqueeze(2))
    lo = backend.mul(q, rmin.unsqueeze(2))
    bound = backend.sum(backend.maximum(hi, lo), dim=-1)  # (B, Hkv, g, G)
    return backend.sum(bound, dim=2)
