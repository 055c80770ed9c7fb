"""Method plans: the public, backend-independent description of what a method does.

Every method (MPCache and the baselines) is lowered to a ``MethodPlan``: an optional
static stage (at the end of prefill), a decode mode, an optional dynamic cluster
selection, a token budget and a cross-layer sharing schedule. The plaintext ``apply`` and
the secure model both run plans, so a method is written once. All counts derived from a
plan are functions of public values only (prompt length, cache length, configuration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

Amount = float | int  # float in (0, 1]: ratio of the prompt; int >= 0: absolute tokens
DecodeMode = Literal["full", "select", "window", "heavy"]


def resolve_tokens(amount: Amount, prompt_len: int) -> int:
    """A ratio (float) of ``prompt_len`` rounded up, or an absolute count (int)."""
    if isinstance(amount, bool):
        raise ValueError("amounts must be a float ratio or an int count, not bool")
    if isinstance(amount, int):
        return amount
    return math.ceil(amount * prompt_len - 1e-9)


def budget_tokens(amount: Amount, seen: int) -> int:
    """Tokens a decode step may attend: a ratio of the ``seen`` tokens rounded DOWN (a
    "5% budget" attends at most 5%), at least one; or an absolute count."""
    if isinstance(amount, bool):
        raise ValueError("amounts must be a float ratio or an int count, not bool")
    if isinstance(amount, int):
        return amount
    return max(1, math.floor(amount * seen + 1e-9))


def check_amount(name: str, amount: Amount | None, allow_none: bool = False) -> None:
    """Raise ValueError unless ``amount`` is a ratio in (0, 1] or a count >= 0."""
    if amount is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be set")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise ValueError(f"{name} must be a float ratio in (0, 1] or an int count, got {amount!r}")
    if isinstance(amount, float) and not 0.0 < amount <= 1.0:
        raise ValueError(f"{name} as a ratio must be in (0, 1], got {amount}")
    if isinstance(amount, int) and amount < 0:
        raise ValueError(f"{name} as a count must be >= 0, got {amount}")


@dataclass(frozen=True)
class StaticSpec:
    """Look-once static eviction at the end of prefill.

    ``keep`` counts every kept prompt token (sinks and window included). ``score`` says
    where importance comes from: "window" (attention of the last ``window`` queries,
    MPCache/SnapKV), "accumulated" (column sums over all prompt queries, H2O) or "none"
    (keep sinks + the most recent tokens only, StreamingLLM). ``window=None`` means the
    window is everything that is kept after the sinks.
    """

    keep: Amount
    window: Amount | None = 0.2
    long_window: Amount | None = None
    long_context_tokens: int | None = None
    sink: int = 16
    score: Literal["window", "accumulated", "none"] = "window"
    pool_kernel: int = 1
    scope: Literal["layer", "kv_head"] = "layer"


@dataclass(frozen=True)
class DynamicSpec:
    """Per-step query-aware cluster selection.

    ``cluster_sizes`` go from the coarsest to the finest level, each dividing the previous.
    ``keep_ratios`` has one ratio per level (fraction of ALL clusters of that level).
    ``similarity``: "linear" (q . (alpha r_max + (1 - alpha) r_min), one inner product per
    cluster), "maxbound" (exact upper bound of q.k over the box, Quest) or "mean"
    (q . mean key, InfLLM-like). ``max_candidates`` / ``growth`` / ``level_cost``: the
    per-context hierarchy of ``dynamic.hierarchy`` (None: the configured levels at every
    context).
    """

    cluster_sizes: tuple[int, ...] = (32, 16)
    keep_ratios: tuple[float, ...] = (0.5, 0.2)
    alpha: float = 0.6
    similarity: Literal["linear", "maxbound", "mean"] = "linear"
    sink: int = 16
    recent: int = 16
    scope: Literal["kv_head", "layer"] = "kv_head"
    max_candidates: int | None = None
    growth: int = 4
    level_cost: float = 52_000.0

    def __post_init__(self) -> None:
        if self.max_candidates is not None and self.max_candidates < self.growth:
            raise ValueError(f"max_candidates must be >= growth ({self.growth}), "
                             f"got {self.max_candidates}")
        if self.growth < 2:
            raise ValueError(f"growth must be >= 2, got {self.growth}")
        if self.level_cost < 0:
            raise ValueError(f"level_cost must be >= 0, got {self.level_cost}")

    def deepened(self, levels: int) -> DynamicSpec:
        """This hierarchy with ``levels`` coarser levels on top, each ``growth`` times the
        one below with the coarsest keep ratio (``dynamic.hierarchy`` picks how many);
        ``levels=0`` is the configured hierarchy with plain counts (``max_candidates``
        cleared: ``step_counts`` caps only a deepened one)."""
        if levels == 0:
            return replace(self, max_candidates=None)
        sizes, ratios = list(self.cluster_sizes), list(self.keep_ratios)
        for _ in range(levels):
            sizes.insert(0, sizes[0] * self.growth)
            ratios.insert(0, ratios[0])
        return replace(self, cluster_sizes=tuple(sizes), keep_ratios=tuple(ratios))


@dataclass(frozen=True)
class MethodPlan:
    """What a method does, in public terms; see the module docstring.

    decode: "full" (attend the whole, possibly compacted, cache), "select" (per-step
    cluster selection with ``dynamic``), "window" (keep the statically selected prefix,
    slide the rest to ``budget`` rows) or "heavy" (H2O: evict the lowest accumulated
    attention outside the recent window once the cache exceeds ``budget``).
    """

    name: str
    static: StaticSpec | None
    decode: DecodeMode
    dynamic: DynamicSpec | None = None
    budget: Amount | None = None
    share_layers: bool = False
    alone_head: int = 2
    alone_tail: int = 2
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.decode == "select" and self.dynamic is None:
            raise ValueError("decode='select' needs a DynamicSpec")
        if self.decode in ("window", "heavy") and self.budget is None:
            raise ValueError(f"decode={self.decode!r} needs a budget")
