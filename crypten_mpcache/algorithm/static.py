"""Look-once static eviction at the end of prefill.

Importance of prompt key j = the attention the observation-window queries give it
(MPCache, SnapKV) or all prompt queries (H2O), averaged over heads. The first ``sink``
tokens and the last ``window`` tokens are always kept; among the others the
``n_select`` most important are kept (public count, secret choice) and the cache is
compacted in original order by a one-hot gather. Kept keys keep the RoPE of their
original positions: compaction moves rows, it never re-rotates them.

GQA choice: ``scope="layer"`` (default, the authors') averages over ALL query heads so
every KV head keeps the same tokens; ``scope="kv_head"`` averages over the query heads of
each KV head and lets each KV head keep its own tokens (same public count).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypten_mpcache.algorithm.backend import Backend, Value
from crypten_mpcache.algorithm.plan import StaticSpec, resolve_tokens


@dataclass(frozen=True)
class StaticCounts:
    """Public counts of one static eviction: keep = sink + n_select + window."""

    prompt_len: int
    sink: int
    window: int
    n_select: int

    @property
    def keep(self) -> int:
        return self.sink + self.n_select + self.window

    @property
    def candidates(self) -> int:
        return self.prompt_len - self.sink - self.window

    @property
    def evicts(self) -> bool:
        return self.keep < self.prompt_len


def static_counts(spec: StaticSpec, prompt_len: int, budget: int | None = None) -> StaticCounts:
    """Derive the public counts from the spec and the (public) prompt length.

    Static eviction never keeps fewer tokens than the decode ``budget`` (tokens attended
    per step): a prompt that fits the budget is not evicted at all.
    """
    keep = resolve_tokens(spec.keep, prompt_len)
    if budget is not None:
        keep = max(keep, budget)
    keep = min(prompt_len, keep)
    sink = min(spec.sink, keep)
    if spec.window is None or spec.score == "none":
        window = keep - sink
    else:
        amount = spec.window
        if (spec.long_context_tokens is not None and spec.long_window is not None
                and prompt_len > spec.long_context_tokens):
            amount = spec.long_window
        window = min(max(1, resolve_tokens(amount, prompt_len)), keep - sink)
    return StaticCounts(prompt_len, sink, window, keep - sink - window)


def head_importance(backend: Backend, probs: Value, n_kv_heads: int, scope: str) -> Value:
    """``probs (B, Hq, rows, L)`` -> importance ``(B, 1 or Hkv, L)``: sum rows, mean heads."""
    per_head = backend.sum(probs, dim=2)
    b, hq, length = per_head.shape
    if scope == "layer":
        return backend.mean(per_head, dim=1, keepdim=True)
    if scope == "kv_head":
        grouped = per_head.reshape(b, n_kv_heads, hq // n_kv_heads, length)
        return backend.mean(grouped, dim=2)
    raise ValueError(f"unknown static scope {scope!r}")


def max_pool(backend: Backend, x: Value, kernel: int) -> Value:
    """Stride-1 max pooling over the last dim, edges clamped (SnapKV's smoothing)."""
    if kernel <= 1:
        return x
    radius = kernel // 2
    length = x.shape[-1]
    out = x
    for shift in range(1, radius + 1):
        if shift >= length:
            break
        left = backend.cat([x[..., shift:], x[..., length - shift:]], dim=-1)
        right = backend.cat([x[..., :shift], x[..., : length - shift]], dim=-1)
        out = backend.maximum(out, backend.maximum(left, right))
    return out


def select_static(backend: Backend, importance: Value, counts: StaticCounts) -> Value:
    """One-hot ``(B, H', n_select, candidates)`` of the kept middle tokens (ascending)."""
    middle = importance[..., counts.sink: counts.prompt_len - counts.window]
    return backend.topk_onehot(middle, counts.n_select)


def compact(backend: Backend, onehot: Value, x: Value, counts: StaticCounts) -> Value:
    """``x (B, Hkv, L, D)`` -> ``(B, Hkv, keep, D)``: sinks, gathered middle, window."""
    length = counts.prompt_len
    middle = x[..., counts.sink: length - counts.window, :]
    parts = [x[..., : counts.sink, :], backend.gather(onehot, middle),
             x[..., length - counts.window:, :]]
    return backend.cat(parts, dim=-2)


def compact_scores(backend: Backend, onehot: Value, scores: Value, counts: StaticCounts) -> Value:
    """Compact a per-token score vector ``(B, H', L)`` like ``compact`` does keys."""
    return compact(backend, onehot, scores.unsqueeze(-1), counts)[..., 0]
