"""The eval harness's view of methods: a name plus a budget becomes a ``MethodSpec``.

Names and configs come from ``crypten_mpcache.methods.resolve_method``, the resolver of
``bench`` and ``generate`` too, so one name at one budget is one configuration in every
command; this module only adds the run bookkeeping. ``full`` needs nothing (no patch). A
method whose config rejects a budget is reported as unavailable with the reason, never
silently skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from crypten_mpcache.algorithm.plan import Amount, check_amount
from crypten_mpcache.config import MPCACHE
from crypten_mpcache.methods import (
    BASELINE_NAMES,
    FULL,
    MethodConfig,
    is_known,
    known_methods,
    resolve_method,
    unknown_method,
)
from crypten_mpcache.plaintext import apply

METHODS = (FULL, MPCACHE, *BASELINE_NAMES)  # the default grid of ``eval``

__all__ = ["FULL", "METHODS", "MethodSpec", "MethodUnavailable", "is_known",
           "known_methods", "method_context", "resolve"]


class MethodUnavailable(RuntimeError):
    """The method cannot run at this budget (its config rejects it)."""


@dataclass(frozen=True)
class MethodSpec:
    """A resolved method: its name, its budget (None for full cache) and its config."""

    name: str
    budget: Amount | None
    config: MethodConfig

    @property
    def is_full(self) -> bool:
        return self.name == FULL


def resolve(name: str, budget: Amount | None) -> MethodSpec:
    """``resolve_method(name, budget)`` with the run's name and budget; a bad name or
    budget is a ValueError, a config that rejects the budget ``MethodUnavailable``."""
    if name == FULL:
        return MethodSpec(FULL, None, resolve_method(FULL))
    if not is_known(name):
        raise unknown_method(name)
    check_amount("budget", budget)
    try:
        return MethodSpec(name, budget, resolve_method(name, budget))
    except (TypeError, ValueError) as exc:
        raise MethodUnavailable(f"{name} at budget {budget}: {exc}") from exc


def method_context(model: Any, spec: MethodSpec) -> contextlib.AbstractContextManager[Any]:
    """The context in which ``model`` runs ``spec`` (nothing to patch for full cache)."""
    if spec.is_full:
        return contextlib.nullcontext()
    return apply(model, spec.config, record=False)
