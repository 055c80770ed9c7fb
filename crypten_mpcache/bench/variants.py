"""The cache variants that ``bench`` compares: full cache, MPCache and its ablations.

A variant is a name the user types (``--cache full,mpcache,...``) that resolves to a cache
policy of ``secure.cache.kv_cache.default_policies()`` plus options. The MPCache ablations
(``config.mpcache_variants``, the same names as ``eval``) are ``mpcache`` (the tuned
default), ``mpcache:paper`` (the authors' configuration) and ``mpcache:<ablation>`` (the
authors' configuration with ONE ``MPCacheConfig`` field changed), all at the same token
budget, so a ratio between ``mpcache:paper`` and an ablation measures that one choice.
Any of them may add ``+field=value`` knobs (``config.variant_overrides``), as in ``eval``.
A variant's policy runs ``methods.resolve_method(name, budget)``, the config ``eval`` and
``generate`` run under the same name and budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crypten_mpcache.algorithm.plan import Amount
from crypten_mpcache.config import (
    OVERRIDE_SEPARATOR,
    is_mpcache_variant,
    mpcache_variants,
    variant_overrides,
)
from crypten_mpcache.methods import resolve_method
from crypten_mpcache.secure.cache.kv_cache import CachePolicy
from crypten_mpcache.secure.cache.method_policy import CachePolicyRegistry, default_policies

MPCACHE_POLICY = "mpcache"

# variant -> (MPCacheConfig overrides, one-line description)
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = mpcache_variants()


@dataclass(frozen=True)
class CacheVariant:
    """A benchmarked cache: the policy name in the registry and its MPCacheConfig
    overrides (None for policies that take no MPCache config, e.g. ``full``)."""

    name: str
    policy: str
    overrides: dict[str, Any] | None = field(default=None, hash=False)
    description: str = ""

    def create(self, budget: Amount, n_layers: int,
               registry: CachePolicyRegistry | None = None) -> CachePolicy:
        """A fresh policy instance (one per run: policies keep per-step state) running
        ``resolve_method(name, budget)``. ``n_layers`` places the layers that select alone
        (index sharing)."""
        registry = registry or default_policies()
        if self.overrides is None:
            return registry.create(self.policy)
        return registry.create(self.policy, config=resolve_method(self.name, budget),
                               n_layers=n_layers)


def known_variants(registry: CachePolicyRegistry | None = None) -> tuple[str, ...]:
    """Every variant name usable now: registry policies, plus the MPCache ablations when
    the ``mpcache`` policy is registered."""
    names = list((registry or default_policies()).names())
    if MPCACHE_POLICY in names:
        names += [a for a in ABLATIONS if a not in names]
    return tuple(names)


def default_caches(registry: CachePolicyRegistry | None = None) -> tuple[str, ...]:
    """``full`` and ``mpcache`` (just ``full`` until the mpcache policy is registered)."""
    names = known_variants(registry)
    return tuple(n for n in ("full", MPCACHE_POLICY) if n in names)


def resolve(name: str, registry: CachePolicyRegistry | None = None) -> CacheVariant:
    """The variant called ``name``; a ValueError names the known ones."""
    registry = registry or default_policies()
    if OVERRIDE_SEPARATOR in name and is_mpcache_variant(name) and \
            MPCACHE_POLICY in registry.names():
        base, knobs = name.split(OVERRIDE_SEPARATOR, 1)
        return CacheVariant(name, MPCACHE_POLICY, variant_overrides(name),
                            f"{ABLATIONS[base][1]}; knobs: {knobs}")
    if name not in known_variants(registry):
        hint = "" if MPCACHE_POLICY in registry.names() else (
            " (the mpcache policy and its ablations appear once it is registered)")
        raise ValueError(f"unknown cache {name!r}; known: "
                         f"{', '.join(known_variants(registry))}{hint}")
    if name in ABLATIONS:
        overrides, description = ABLATIONS[name]
        return CacheVariant(name, MPCACHE_POLICY, dict(overrides), description)
    return CacheVariant(name, name, None, "registry policy")
