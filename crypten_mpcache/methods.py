"""One method name plus one budget -> one configuration, for every entry point.

``resolve_method`` is the only place that turns what a user types (``--method`` of
``eval``, ``--cache`` of ``bench`` and ``generate``, ``private_generate(cache=, budget=)``)
into a config with ``.plan()``, so a name at a budget means the same computation in
plaintext accuracy runs, MPC cost runs and private generation. Names:

- ``full``: no eviction (any budget is ignored: the whole cache is attended).
- ``mpcache`` (the tuned default), ``mpcache:<variant>`` (``config.mpcache_variants``),
  either followed by ``+field=value`` knobs (``config.variant_overrides``).
- the baselines ``streaming``, ``snapkv``, ``h2o``, ``quest``, ``infllm``
  (``algorithm.baselines``).

A budget is a float ratio of the context in (0, 1] or an int count of tokens attended per
decode step (``MPCacheConfig.at_budget``); ``None`` leaves MPCache on its level ratios
without a cap, and a baseline then needs one.
"""

from __future__ import annotations

from crypten_mpcache.algorithm.baselines import (
    BASELINES,
    FullCacheConfig,
    H2OConfig,
    InfLLMConfig,
    QuestConfig,
    SnapKVConfig,
    StreamingLLMConfig,
)
from crypten_mpcache.algorithm.plan import Amount, check_amount
from crypten_mpcache.config import (
    MPCACHE,
    OVERRIDE_SEPARATOR,
    MPCacheConfig,
    is_mpcache_variant,
    mpcache_variants,
    variant_overrides,
)

FULL = FullCacheConfig.name
BASELINE_NAMES: tuple[str, ...] = tuple(name for name in BASELINES if name != FULL)

# What ``resolve_method`` returns: every config lowers to a MethodPlan with ``.plan()``.
MethodConfig = (MPCacheConfig | FullCacheConfig | StreamingLLMConfig | SnapKVConfig
                | H2OConfig | QuestConfig | InfLLMConfig)


def known_methods() -> tuple[str, ...]:
    """Every plain method name (MPCache variants may also add ``+field=value`` knobs)."""
    variants = tuple(v for v in mpcache_variants() if v != MPCACHE)
    return (FULL, MPCACHE, *BASELINE_NAMES, *variants)


def is_known(name: str) -> bool:
    """A known name, or an MPCache variant with knobs (checked when it is resolved)."""
    return name in known_methods() or is_mpcache_variant(name)


def unknown_method(name: str) -> ValueError:
    """The one-line error for a name ``resolve_method`` does not know."""
    return ValueError(f"unknown method {name!r}; known: {', '.join(known_methods())} "
                      f"(an MPCache variant may add knobs: mpcache{OVERRIDE_SEPARATOR}"
                      "field=value)")


def resolve_method(name: str, budget: Amount | None = None) -> MethodConfig:
    """The configuration of method ``name`` at ``budget`` (see the module docstring).

    ``resolve_method("mpcache", b) == MPCacheConfig.default(budget=b)`` and
    ``resolve_method("mpcache:paper", b) == MPCacheConfig.from_budget(b)``.
    """
    if name == FULL:
        return FullCacheConfig()
    check_amount("budget", budget, allow_none=True)
    if is_mpcache_variant(name):
        config = MPCacheConfig(**variant_overrides(name))
        return config if budget is None else config.at_budget(budget)
    if name in BASELINE_NAMES:
        if budget is None:
            raise ValueError(f"method {name!r} needs a budget (a ratio like 0.05 or a token "
                             "count like 128)")
        return BASELINES[name](budget=budget)
    raise unknown_method(name)


__all__ = ["BASELINE_NAMES", "FULL", "MethodConfig", "is_known", "known_methods",
           "resolve_method", "unknown_method"]
