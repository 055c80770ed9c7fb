"""Method registry: a method name plus a budget becomes a method config and a context.

The eviction methods live elsewhere (``crypten_mpcache.config``,
``crypten_mpcache.algorithm.baselines``, ``crypten_mpcache.plaintext``); this module only
maps names to their configs, so that the harness never implements a method itself.
``full`` needs nothing (no patch). A method whose module is missing or that rejects a
budget is reported as unavailable with the reason, never silently skipped.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any

from crypten_mpcache.config import is_mpcache_variant, mpcache_variants

FULL = "full"
BASELINES = ("streaming", "snapkv", "h2o", "quest", "infllm")
METHODS = (FULL, "mpcache", *BASELINES)


class MethodUnavailable(RuntimeError):
    """The method cannot run (its implementation is missing or rejects the budget)."""


@dataclass(frozen=True)
class MethodSpec:
    """A resolved method: its name, its budget (None for full cache) and its config."""

    name: str
    budget: float | None
    config: Any = None

    @property
    def is_full(self) -> bool:
        return self.config is None


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MethodUnavailable(f"{module} is not importable ({exc})") from exc


# Baseline name in this harness -> key of crypten_mpcache.algorithm.baselines.BASELINES.
BASELINE_KEYS = {"streaming": "streamingllm", "snapkv": "snapkv", "h2o": "h2o",
                 "quest": "quest", "infllm": "infllm"}


def _mpcache(name: str, budget: float) -> Any:
    """``config.mpcache_variant``: one name means one configuration here and in bench."""
    config = _import("crypten_mpcache.config")
    return config.mpcache_variant(name, budget)


def _baseline(name: str, budget: float) -> Any:
    module = _import("crypten_mpcache.algorithm.baselines")
    table = getattr(module, "BASELINES", {})
    key = BASELINE_KEYS[name]
    if key not in table:
        raise MethodUnavailable(f"crypten_mpcache.algorithm.baselines has no {key!r}")
    return table[key](budget=budget)


def known_methods() -> tuple[str, ...]:
    """Every method name this registry understands, MPCache ablations included."""
    return METHODS + tuple(v for v in mpcache_variants() if v not in METHODS)


def is_known(name: str) -> bool:
    """A registered name, or an MPCache variant with ``+field=value`` knobs."""
    return name in known_methods() or is_mpcache_variant(name)


def resolve(name: str, budget: float | None) -> MethodSpec:
    """The config of ``name`` at ``budget`` (fraction of the prompt attended per step)."""
    if name == FULL:
        return MethodSpec(FULL, None)
    if not is_known(name):
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(known_methods())}"
                         " (an MPCache variant may add knobs: mpcache+field=value)")
    if budget is None or not 0 < budget <= 1:
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    try:
        if name.startswith("mpcache"):
            return MethodSpec(name, budget, _mpcache(name, budget))
        return MethodSpec(name, budget, _baseline(name, budget))
    except (TypeError, ValueError) as exc:
        raise MethodUnavailable(f"{name} at budget {budget}: {exc}") from exc


def apply(model: Any, spec: MethodSpec) -> contextlib.AbstractContextManager[Any]:
    """The context in which ``model`` runs ``spec`` (nothing to patch for full cache)."""
    if spec.is_full:
        return contextlib.nullcontext()
    plaintext = _import("crypten_mpcache.plaintext")
    return plaintext.apply(model, spec.config, record=False)
