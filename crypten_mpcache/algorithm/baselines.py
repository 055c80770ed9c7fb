"""Baseline methods, lowered to the same ``MethodPlan`` as MPCache.

Every baseline is charged the same way: ``budget`` = tokens attended per decode step (a
float ratio of the prompt or an int count), forced sinks and recent tokens included.
Static-only methods compact the prompt to the budget at prefill and then keep the cache at
the budget while decoding (sliding or heavy-hitter eviction), so every step attends to at
most ``budget`` tokens; query-aware methods keep the whole cache and select per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypten_mpcache.algorithm.plan import (
    Amount,
    DynamicSpec,
    MethodPlan,
    StaticSpec,
    check_amount,
)


def _check(budget: Amount, **counts: int) -> None:
    check_amount("budget", budget)
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class FullCacheConfig:
    """No eviction: every step attends to the whole cache (the accuracy reference)."""

    name = "full"

    def plan(self) -> MethodPlan:
        return MethodPlan(name=self.name, static=None, decode="full")


@dataclass(frozen=True)
class StreamingLLMConfig:
    """StreamingLLM (Xiao et al. 2023): attention sinks plus a sliding recent window.

    The first ``sink_tokens`` tokens and the most recent ``budget - sink_tokens`` are kept;
    nothing depends on the query or on attention scores. At prefill the prompt is cut to
    that shape, and at each decode step the oldest non-sink token leaves the window.
    """

    budget: Amount = 0.2
    sink_tokens: int = 4
    name = "streaming"

    def __post_init__(self) -> None:
        _check(self.budget, sink_tokens=self.sink_tokens)

    def plan(self) -> MethodPlan:
        static = StaticSpec(keep=self.budget, window=None, sink=self.sink_tokens, score="none")
        return MethodPlan(name=self.name, static=static, decode="window", budget=self.budget)


@dataclass(frozen=True)
class SnapKVConfig:
    """SnapKV (Li et al. 2024): observation-window voting at the end of prefill.

    The last ``window_tokens`` prompt queries vote for keys (attention summed over the
    window, max-pooled with ``pool_kernel`` to keep neighbours, per KV head); the window
    and the top-voted keys are kept up to the budget. During decoding the selected prefix
    stays and the window/generated tail slides so each step attends to ``budget`` tokens.
    """

    budget: Amount = 0.2
    window_tokens: int = 32
    pool_kernel: int = 7
    sink_tokens: int = 0
    name = "snapkv"

    def __post_init__(self) -> None:
        _check(self.budget, window_tokens=self.window_tokens, sink_tokens=self.sink_tokens)
        if self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ValueError("pool_kernel must be a positive odd number")

    def plan(self) -> MethodPlan:
        static = StaticSpec(keep=self.budget, window=max(1, self.window_tokens),
                            sink=self.sink_tokens, score="window",
                            pool_kernel=self.pool_kernel, scope="kv_head")
        return MethodPlan(name=self.name, static=static, decode="window", budget=self.budget)


@dataclass(frozen=True)
class H2OConfig:
    """H2O (Zhang et al. 2023): heavy hitters by accumulated attention plus recent tokens.

    At prefill every prompt query's attention is summed per key (averaged over heads); the
    ``recent_ratio`` share of the budget goes to the most recent tokens and the rest to the
    heaviest hitters. At each decode step the new attention is added to the running scores
    and, once the cache exceeds the budget, the lowest-scoring non-recent token is evicted.
    """

    budget: Amount = 0.2
    recent_ratio: float = 0.5
    name = "h2o"

    def __post_init__(self) -> None:
        _check(self.budget)
        if not 0.0 < self.recent_ratio <= 1.0:
            raise ValueError("recent_ratio must be in (0, 1]")

    def plan(self) -> MethodPlan:
        window = self.budget * self.recent_ratio
        window = round(window) if isinstance(self.budget, int) else window
        static = StaticSpec(keep=self.budget, window=window, sink=0, score="accumulated")
        return MethodPlan(name=self.name, static=static, decode="heavy", budget=self.budget)


@dataclass(frozen=True)
class QuestConfig:
    """Quest (Tang et al. 2024): query-aware page selection with the exact max-bound.

    The cache is cut into pages of ``page_size`` tokens with a per-channel min/max box;
    each decode step scores pages by sum_i max(q_i max_i, q_i min_i) and attends to the
    top pages within the budget plus the current (partial) page. No static eviction; the
    first ``dense_layers`` layers attend to everything, as in the paper.
    """

    budget: Amount = 0.2
    page_size: int = 16
    dense_layers: tuple[int, ...] = (0, 1)
    name = "quest"

    def __post_init__(self) -> None:
        _check(self.budget, page_size=self.page_size - 1)

    def plan(self) -> MethodPlan:
        spec = DynamicSpec(cluster_sizes=(self.page_size,), keep_ratios=(1.0,),
                           similarity="maxbound", sink=0, recent=1)
        return MethodPlan(name=self.name, static=None, decode="select", dynamic=spec,
                          budget=self.budget, dense_layers=self.dense_layers)


@dataclass(frozen=True)
class InfLLMConfig:
    """InfLLM-like (Xiao et al. 2024): sinks + local window + retrieved memory blocks.

    Past the sinks and the local window, the context is split into blocks of
    ``block_size`` tokens represented by their mean key (InfLLM picks representative
    tokens; the mean is the common simplification); each step retrieves the blocks with
    the highest q . representative that fit in the budget. No static eviction.
    """

    budget: Amount = 0.2
    block_size: int = 32
    sink_tokens: int = 16
    local_tokens: int = 64
    name = "infllm"

    def __post_init__(self) -> None:
        _check(self.budget, block_size=self.block_size - 1, sink_tokens=self.sink_tokens,
               local_tokens=self.local_tokens - 1)

    def plan(self) -> MethodPlan:
        spec = DynamicSpec(cluster_sizes=(self.block_size,), keep_ratios=(1.0,),
                           similarity="mean", sink=self.sink_tokens, recent=self.local_tokens)
        return MethodPlan(name=self.name, static=None, decode="select", dynamic=spec,
                          budget=self.budget)


BASELINES = {
    cls.name: cls
    for cls in (FullCacheConfig, StreamingLLMConfig, SnapKVConfig, H2OConfig, QuestConfig,
                InfLLMConfig)
}
