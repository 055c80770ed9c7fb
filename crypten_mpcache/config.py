"""MPCacheConfig: every knob of MPCache, validated, with the authors' defaults.

A config is lowered to a ``MethodPlan`` (``crypten_mpcache.algorithm.plan``) that the
plaintext ``apply`` and the secure model both run. A method name plus a budget becomes a
config in one place, ``crypten_mpcache.methods.resolve_method``. Amounts are a float ratio of the
prompt in (0, 1] or an int count of tokens. A *budget* counts every token attended per
decode step, forced sink and recent tokens included; a cache no longer than the budget
is attended in full.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from crypten_mpcache.algorithm.plan import (
    Amount,
    DynamicSpec,
    MethodPlan,
    StaticSpec,
    check_amount,
)


@dataclass(frozen=True)
class MPCacheConfig:
    """MPCache knobs (defaults = the authors' code: ~5% budget on HotpotQA).

    static_keep: prompt tokens kept by look-once static eviction (sinks and window
        included). window_ratio: observation window (always kept), long_window_ratio past
        long_context_tokens. sink_tokens: first tokens always kept (static) and attended
        (dynamic). recent_tokens: minimum most-recent tokens always attended.
    cluster_sizes / keep_ratios: per level, coarsest first (32, 16) / (0.5, 0.2); the
        level-l ratio is a fraction of ALL level-l clusters. coarse_floor: with a budget
        (``at_budget``) each coarser level keeps max(coarse_floor, 2 x the next level's
        ratio) of its clusters (authors: 0.5); lower means fewer candidates for the finer
        top-k, which under MPC costs with the square of its candidates.
        max_candidates / level_cost: with a budget, past max_candidates coarsest clusters
        (~4.1k tokens at 128) the cost model (``algorithm.dynamic.hierarchy``) may put
        coarser levels on top so that no top-k competes over much more than
        max_candidates; level_cost prices one more level's rounds in comparisons (52k:
        LAN profile, ~173k: WAN). None keeps the configured levels at every context.
        budget: optional cap on tokens
        attended per decode step (overrides the last-level ratio). alpha: weight of r_max
        in the linear representative. similarity: "linear" (MPCache) or "maxbound"
        (ablation). selection_scope: "kv_head" (the authors': every KV head selects its
        own clusters) or "layer" (cluster scores summed over KV heads, one selection per
        layer shared by all heads: under MPC one top-k per layer instead of per head).
        index_sharing: first alone_head and last alone_tail layers select
        alone, in between layer 2i selects and 2i+1 reuses. dense_layers: layers that
        attend to their whole (statically compacted) cache.
    """

    static: bool = True
    static_keep: Amount = 0.3
    window_ratio: float = 0.2
    long_window_ratio: float = 0.1
    long_context_tokens: int = 24_000
    sink_tokens: int = 16
    recent_tokens: int = 16
    static_scope: Literal["layer", "kv_head"] = "layer"
    dynamic: bool = True
    hierarchy: bool = True
    cluster_sizes: tuple[int, ...] = (32, 16)
    keep_ratios: tuple[float, ...] = (0.5, 0.2)
    coarse_floor: float = 0.5
    max_candidates: int | None = 128
    level_cost: float = 52_000.0
    budget: Amount | None = None
    alpha: float = 0.6
    similarity: Literal["linear", "maxbound"] = "linear"
    selection_scope: Literal["kv_head", "layer"] = "kv_head"
    index_sharing: bool = True
    alone_head: int = 2
    alone_tail: int = 2
    dense_layers: tuple[int, ...] = ()

    name = "mpcache"

    def __post_init__(self) -> None:
        check_amount("static_keep", self.static_keep)
        check_amount("budget", self.budget, allow_none=True)
        for field in ("window_ratio", "long_window_ratio"):
            value = getattr(self, field)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{field} must be in (0, 1], got {value}")
        if isinstance(self.static_keep, float) and self.static_keep < self.window_ratio:
            raise ValueError(
                f"static_keep={self.static_keep} must cover the observation window "
                f"(window_ratio={self.window_ratio})")
        for field in ("sink_tokens", "long_context_tokens", "alone_head", "alone_tail"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0")
        if self.recent_tokens < 1:
            raise ValueError("recent_tokens must be >= 1 (a decode query attends to itself)")
        self._check_levels()
        if self.max_candidates is not None and self.max_candidates < 4:
            raise ValueError(f"max_candidates must be >= 4 or None, got {self.max_candidates}")
        if self.level_cost < 0:
            raise ValueError(f"level_cost must be >= 0, got {self.level_cost}")
        if not 0.0 < self.coarse_floor <= 1.0:
            raise ValueError(f"coarse_floor must be in (0, 1], got {self.coarse_floor}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.similarity not in ("linear", "maxbound"):
            raise ValueError(f"similarity must be 'linear' or 'maxbound', got {self.similarity!r}")
        if self.selection_scope not in ("kv_head", "layer"):
            raise ValueError("selection_scope must be 'kv_head' or 'layer', "
                             f"got {self.selection_scope!r}")
        if self.static_scope not in ("layer", "kv_head"):
            raise ValueError(
                f"static_scope must be 'layer' or 'kv_head', got {self.static_scope!r}")
        if any(layer < 0 for layer in self.dense_layers):
            raise ValueError("dense_layers must be non-negative layer indices")

    def _check_levels(self) -> None:
        sizes, ratios = self.cluster_sizes, self.keep_ratios
        if not sizes or len(sizes) != len(ratios):
            raise ValueError("cluster_sizes and keep_ratios need one entry per level")
        if any(s < 1 for s in sizes):
            raise ValueError(f"cluster sizes must be >= 1, got {sizes}")
        for coarse, fine in zip(sizes, sizes[1:], strict=False):
            if coarse <= fine or coarse % fine:
                raise ValueError(f"each cluster size must be a multiple of the next: {sizes}")
        if any(not 0.0 < r <= 1.0 for r in ratios):
            raise ValueError(f"keep ratios must be in (0, 1], got {ratios}")

    @staticmethod
    def default_overrides() -> dict[str, object]:
        """What ``default()`` changes from the authors' knobs, and why (results/NOTES.md).

        Measured on SmolLM2-135M-Instruct, passkey, real essays:
        - static stage off, index sharing off, one top-k per layer on head-summed scores
          (2k, n = 3): adjacent layers share only ~45% of their selected clusters (paper:
          >80%), so sharing loses the key; every static stage tried dropped it in most
          samples; per-layer selection (also the cheaper one under MPC) kept it.
        - clusters of 32 then 8 tokens instead of 32 then 16, and a coarse level that keeps
          max(0.25, 2 x budget) of its clusters instead of max(0.5, 2 x budget) (2k, n = 20):
          0.65 / 0.75 / 0.95 / 1.00 at budgets 0.05 / 0.1 / 0.2 / 0.3 vs 0.35 / 0.60 /
          0.90 / 0.90 for 32/16, at the same MPC cost per decode step (Llama-2-7B shape,
          2k, 5%: 46.2 vs 45.9 MiB); budget-to-parity 0.2 (Quest: 0.3). Clusters of 16/8
          scored the same but the top-k over twice the coarse clusters cost 18 MiB more.
        - last-level keep ratio 0.3 (level 1: 0.6) when no budget is given: the smallest
          budget at which it matched the full cache on all 20 samples at 2k.
        """
        return {"static": False, "index_sharing": False, "selection_scope": "layer",
                "cluster_sizes": (32, 8), "coarse_floor": 0.25, "keep_ratios": (0.6, 0.3)}

    @classmethod
    def default(cls, budget: Amount | None = None, **overrides: object) -> MPCacheConfig:
        """The tuned configuration (``default_overrides``) with ``overrides``, at ``budget``
        the way every entry point applies one (``at_budget``), so ``default(budget=b)`` is
        ``resolve_method("mpcache", b)``; the dataclass defaults and ``paper()`` stay the
        authors' configuration."""
        config = cls(**{**cls.default_overrides(), **overrides})
        return config if budget is None else config.at_budget(budget)

    @classmethod
    def paper(cls) -> MPCacheConfig:
        """The authors' configuration (their code defaults; the paper's '5%' setting)."""
        return cls(static=True, static_keep=0.3, window_ratio=0.2, long_window_ratio=0.1,
                   long_context_tokens=24_000, cluster_sizes=(32, 16), keep_ratios=(0.5, 0.2),
                   alpha=0.6, similarity="linear", hierarchy=True, index_sharing=True,
                   alone_head=2, alone_tail=2)

    @classmethod
    def from_budget(cls, budget: Amount, **overrides: object) -> MPCacheConfig:
        """The authors' knobs with ``overrides``, at ``budget`` (see ``at_budget``)."""
        return cls(**overrides).at_budget(budget)

    def at_budget(self, budget: Amount) -> MPCacheConfig:
        """This configuration with decode steps attending to at most ``budget`` tokens.

        A count only sets the cap (the level ratios stay this config's). For a ratio
        ``b`` the static stage keeps ``window_ratio + 2b`` of the prompt (the paper's 30%
        at b = 5%), the last level keeps ``b / static_keep`` of the compacted cache (``b``
        of the whole cache when ``static=False``) and each coarser level twice that, at
        least ``coarse_floor`` (the authors: half).
        """
        check_amount("budget", budget)
        if isinstance(budget, int):
            return replace(self, budget=budget)
        keep = round(min(1.0, self.window_ratio + 2.0 * budget), 6)
        # Without the static stage nothing is compacted: ratios are of the whole cache.
        last = min(1.0, budget / keep) if self.static else budget
        ratios = list(self.keep_ratios)
        ratios[-1] = round(last, 6)
        for i in range(len(ratios) - 2, -1, -1):
            ratios[i] = round(min(1.0, max(self.coarse_floor, 2.0 * ratios[i + 1])), 6)
        return replace(self, budget=budget, static_keep=keep, keep_ratios=tuple(ratios))

    def dynamic_spec(self) -> DynamicSpec:
        sizes, ratios = self.cluster_sizes, self.keep_ratios
        if not self.hierarchy:
            sizes, ratios = sizes[-1:], ratios[-1:]
        return DynamicSpec(cluster_sizes=sizes, keep_ratios=ratios, alpha=self.alpha,
                           similarity=self.similarity, sink=self.sink_tokens,
                           recent=self.recent_tokens, scope=self.selection_scope,
                           max_candidates=self.max_candidates, level_cost=self.level_cost)

    def static_spec(self) -> StaticSpec:
        return StaticSpec(keep=self.static_keep, window=self.window_ratio,
                          long_window=self.long_window_ratio,
                          long_context_tokens=self.long_context_tokens, sink=self.sink_tokens,
                          score="window", scope=self.static_scope)

    def plan(self) -> MethodPlan:
        """Lower to the backend-independent plan run by ``apply`` and the secure model."""
        return MethodPlan(
            name=self.name,
            static=self.static_spec() if self.static else None,
            decode="select" if self.dynamic else "full",
            dynamic=self.dynamic_spec() if self.dynamic else None,
            budget=self.budget,
            share_layers=self.index_sharing,
            alone_head=self.alone_head,
            alone_tail=self.alone_tail,
            dense_layers=self.dense_layers,
        )


# The MPCache ablations shared by `bench` and `eval`: name -> (MPCacheConfig overrides of
# the AUTHORS' knobs, what the variant is). Each removes or changes one idea of the paper.
MPCACHE_ABLATIONS: dict[str, tuple[dict[str, object], str]] = {
    "no-dynamic": ({"dynamic": False}, "look-once static eviction only"),
    "no-static": ({"static": False}, "query-aware dynamic selection only"),
    "maxbound": ({"similarity": "maxbound"},
                 "exact max-bound similarity (comparisons) instead of the linear one"),
    "no-hierarchy": ({"hierarchy": False}, "one cluster level instead of two"),
    "no-sharing": ({"index_sharing": False}, "no cross-layer index sharing"),
    "layer-scope": ({"selection_scope": "layer"},
                    "one top-k per layer on scores summed over KV heads"),
    "layer-scope-one-level": ({"selection_scope": "layer", "hierarchy": False},
                              "one top-k per layer, one cluster level"),
}

MPCACHE = "mpcache"
PAPER_VARIANT = "paper"
TUNED_V1 = "tuned-v1"


def mpcache_variants() -> dict[str, tuple[dict[str, object], str]]:
    """Every MPCache variant name of ``bench`` and ``eval`` -> (overrides, description).

    ``mpcache`` is the tuned ``MPCacheConfig.default()``, ``mpcache:paper`` the authors'
    configuration and ``mpcache:<ablation>`` the authors' configuration with one change;
    ``crypten_mpcache.methods.resolve_method`` puts them at a budget for every entry point.
    """
    return {
        MPCACHE: (MPCacheConfig.default_overrides(),
                  "tuned default: dynamic selection only, one top-k per layer, no sharing, "
                  "32/8-token clusters, coarse level keeps >= 25%"),
        f"{MPCACHE}:{PAPER_VARIANT}": ({}, "the authors' configuration (static + dynamic + "
                                           "hierarchy + index sharing, per KV head)"),
        f"{MPCACHE}:{TUNED_V1}": (
            {"static": False, "index_sharing": False, "selection_scope": "layer"},
            "the tuned default with clusters 32/16 and a coarse level >= 50%: the "
            "configuration the tuned-v1 results were measured with"),
        **{f"{MPCACHE}:{name}": entry for name, entry in MPCACHE_ABLATIONS.items()},
    }


OVERRIDE_SEPARATOR = "+"


def _coerce(field: str, text: str, current: object) -> object:
    """``text`` as the type of ``field``'s current value (tuples are '/'-separated)."""
    if field == "max_candidates" and text.lower() == "none":
        return None
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{field} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(int(x) if field != "keep_ratios" else float(x)
                     for x in text.split("/") if x)
    if isinstance(current, int) and "." not in text:
        return int(text)
    if isinstance(current, int | float) or current is None:
        return float(text) if "." in text else int(text)
    return text


def is_mpcache_variant(name: str) -> bool:
    """Whether ``name`` is a variant of ``mpcache_variants``, with or without knobs (its
    knobs are checked by ``variant_overrides``)."""
    return name.split(OVERRIDE_SEPARATOR, 1)[0] in mpcache_variants()


def variant_overrides(name: str) -> dict[str, object]:
    """Overrides of ``name`` = a variant of ``mpcache_variants`` optionally followed by
    ``+field=value`` knobs, e.g. ``mpcache+selection_scope=kv_head+cluster_sizes=16/8``:
    candidate configurations are evaluated by name, without new code."""
    base, *knobs = name.split(OVERRIDE_SEPARATOR)
    variants = mpcache_variants()
    if base not in variants:
        raise ValueError(f"unknown MPCache variant {base!r}; choose from {', '.join(variants)}")
    overrides = dict(variants[base][0])
    reference = MPCacheConfig(**overrides)
    fields = set(MPCacheConfig.__dataclass_fields__) - {"budget"}
    for knob in knobs:
        field, eq, text = knob.partition("=")
        if not eq or field not in fields:
            raise ValueError(f"bad knob {knob!r} in {name!r}: use field=value with a field of "
                             f"MPCacheConfig ({', '.join(sorted(fields))}); the budget is "
                             "set by --budget")
        try:
            overrides[field] = _coerce(field, text, getattr(reference, field))
        except ValueError as exc:
            raise ValueError(f"bad value in knob {knob!r}: {exc}") from exc
    return overrides
