"""The cache policy that runs any method's plan on the encrypted KV cache.

The decisions are the engine's (``algorithm.engine.Engine`` on a ``CryptenBackend``), so
the secure selections are the plaintext algorithm's computation; this host only turns
them into operations on premasked operands:

- End of prefill: a static choice compacts K and V by ONE token-level one-hot product
  with the premasked cache (only the one-hot is opened; a choice with no secret part is
  public slices), and the kept rows are premasked again (one opening). The layer that
  selects dynamically premasks its cluster representatives (``RepOperands``).
- Every decode step: a query-aware choice scores every full cluster against the
  premasked representatives (opens the summed query; every level and the attention's
  q K^T in one round), its per-level one-hots are
  composed into one absolute one-hot (at long contexts: two, ``selection_operands``),
  premasked once per step and shared with the layers that reuse the selection;
  attention reads it through ``SelectedKeys`` / ``SelectedValues``
  (``secure.cache.attended``: scores first, then select). Sliding-window methods attend
  to a public window of the cache the same way.

Not supported under MPC: decode-time heavy-hitter eviction (H2O), whose choice at every
step depends on the attention the previous steps computed; it fails at construction.
Every shape depends on public values only. ``debug=True`` (tests only) makes the engine
reveal each choice through the named ``secure.primitives.reveal.debug_reveal_selection`` and
record it (``records``), in the schema of the plaintext ``Session.records``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crypten_mpcache.algorithm.choices import (
    LayerState,
    LevelScores,
    SelectionRecord,
    StaticChoice,
    compact_rows,
)
from crypten_mpcache.algorithm.clusters import group_queries
from crypten_mpcache.algorithm.engine import Engine
from crypten_mpcache.algorithm.plan import MethodPlan
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.backend import CryptenBackend, CryptenBackendConfig
from crypten_mpcache.secure.cache.attended import (
    ClusterSelection,
    QueryScores,
    SelectedKeys,
    SelectedValues,
    WindowSelection,
)
from crypten_mpcache.secure.cache.kv_cache import CachePolicy, FullCache, SecureKVLayer
from crypten_mpcache.secure.cache.selection_operands import (
    RepOperands,
    compaction_matrix,
    selection_operands,
)
from crypten_mpcache.secure.primitives.openings import open_together
from crypten_mpcache.secure.primitives.premask import fixed_operands


@dataclass
class MethodPolicy(CachePolicy):
    """Runs ``plan`` (any method's) on the encrypted cache of an ``n_layers`` model;
    ``debug`` reveals and records every choice (tests only)."""

    plan: MethodPlan
    n_layers: int
    backend_config: CryptenBackendConfig = field(default_factory=CryptenBackendConfig)
    debug: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.plan, MethodPlan):
            raise TypeError(f"plan must be a MethodPlan, got {type(self.plan).__name__}")
        if self.plan.decode == "heavy":
            raise ValueError(f"{self.plan.name} evicts by accumulated attention at every "
                             "decode step, which the secure cache does not support")
        self.backend = CryptenBackend(self.backend_config)
        self.engine = Engine(self.plan, self.backend, self.n_layers, record=self.debug)
        self._reps: dict[int, RepOperands] = {}
        self._query_scores: dict[int, QueryScores] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.plan.name

    @property
    def records(self) -> list[SelectionRecord]:
        """The engine's records (only with ``debug=True``)."""
        return self.engine.records

    def selector(self, layer: int) -> int:
        """The layer whose selection ``layer`` uses (index sharing)."""
        return self.engine.selector(layer)

    # -- prefill ------------------------------------------------------------------------
    def prefill_window(self, prompt_len: int) -> int:
        return self.engine.prefill_rows(prompt_len)

    def after_prefill(self, layer: SecureKVLayer, window_probs: Any | None) -> None:
        index = layer.layer_idx
        probs = None if window_probs is None else lambda rows: window_probs[..., -rows:, :]
        with operator_scope("static_eviction"):
            state = self.engine.prefill(index, layer.keys.value(), probs,
                                        lambda choice: self._compact(layer, choice))
            if state.clusters is not None and self.plan.dynamic.similarity != "maxbound":
                reps = RepOperands(len(state.clusters.levels))
                reps.sync(state.clusters, layer.premask, f"mpcache/layer{index}")
                self._reps[index] = reps

    def _compact(self, layer: SecureKVLayer, choice: StaticChoice) -> Any:
        """Replace the layer's cache by the rows ``choice`` keeps; returns the keys."""
        index = layer.layer_idx
        if choice.onehot is None:  # public rows only: slices of the values
            kept = [compact_rows(self.backend, None, x.value(), choice.counts)
                    for x in (layer.keys, layer.values)]
        else:
            selection = compaction_matrix(self.backend, choice.onehot, choice.counts)
            kept = [self.backend.gather(selection, x) for x in (layer.keys, layer.values)]
        names = [f"mpcache/layer{index}/static/k", f"mpcache/layer{index}/static/v"]
        layer.replace(*fixed_operands(kept, names=names, premask=layer.premask))
        return layer.keys.value()

    # -- decode -------------------------------------------------------------------------
    def select(self, layer: SecureKVLayer, query: Any) -> tuple[Any, Any]:
        index = layer.layer_idx
        with operator_scope("similarity"):
            choice = self.engine.decode(
                index, query, lambda: layer.new_keys[..., -1:, :],
                lambda state: self._level_scores(layer, state, query))
        scores = self._query_scores.pop(index, None)
        if choice.mode == "window":
            selection = WindowSelection(layer.get_seq_length(), choice.frozen, choice.tail)
        elif choice.selects:
            if choice.fresh and choice.onehots:
                with operator_scope("gather"):
                    name = f"mpcache/layer{index}/step{self.engine.layers[index].step}/selection"
                    rows = int(query.shape[1]) // int(choice.onehots[0].shape[1])
                    choice.payload = selection_operands(self.backend, choice.onehots,
                                                        choice.counts, rows, layer.premask,
                                                        name)
            selection = ClusterSelection(choice.counts, choice.payload)
        else:
            return layer.keys, layer.values
        return (SelectedKeys(layer.keys, selection, scores),
                SelectedValues(layer.values, selection))

    def _level_scores(self, layer: SecureKVLayer, state: LayerState, query: Any
                      ) -> LevelScores | None:
        """Scores of every full cluster per level against the premasked representatives
        (their newly full clusters premasked first); None for the max-bound score."""
        reps = self._reps.get(layer.layer_idx)
        if reps is None:
            return None
        reps.sync(state.clusters, layer.premask, f"mpcache/layer{layer.layer_idx}")
        scored: list[Any] = []

        def level_scores(level: int) -> Any:
            if not scored:
                scored.extend(self._scores_together(layer, reps, query))
            return scored[level]

        return level_scores

    def _scores_together(self, layer: SecureKVLayer, reps: RepOperands, query: Any
                         ) -> list[Any]:
        """Every level's cluster scores and the attention's q K^T over the whole cache in
        ONE round: all of them open only the (grouped, summed) query. q K^T waits in
        ``_query_scores`` for the keys of this step (``attended.QueryScores``)."""
        grouped = group_queries(query, int(layer.keys.shape[1]))
        query_sum = grouped.sum(2, keepdim=True)
        pending = [reps.scores_pending(query_sum, level) for level in range(reps.levels)]
        pending.append(layer.keys.transpose(-1, -2).product_pending(grouped, "matmul"))
        *levels, keys = open_together(*pending)
        self._query_scores[layer.layer_idx] = QueryScores(grouped, keys)
        return levels


def create_policy(config: Any = None, n_layers: int | None = None,
                  **options: Any) -> MethodPolicy:
    """Registry factory: the policy of ``config`` (any method config with ``.plan()``,
    e.g. from ``methods.resolve_method``, or a ``MethodPlan``; default: the tuned
    MPCache) for a model of ``n_layers`` layers."""
    if n_layers is None:
        raise ValueError("a method policy needs n_layers (model.config.num_hidden_layers)")
    config = MPCacheConfig.default() if config is None else config
    plan = config if isinstance(config, MethodPlan) else config.plan()
    return MethodPolicy(plan=plan, n_layers=n_layers, **options)


@dataclass(frozen=True)
class CachePolicyRegistry:
    """Name -> factory of cache policies: ``full`` (attend everything) and ``mpcache``
    (any method's plan through the engine)."""

    factories: tuple[tuple[str, Callable[..., CachePolicy]], ...] = (
        ("full", FullCache), ("mpcache", create_policy))

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.factories)

    def create(self, name: str, **options: Any) -> CachePolicy:
        for known, factory in self.factories:
            if known == name:
                return factory(**options)
        raise ValueError(f"unknown cache policy {name!r}; known: {', '.join(self.names())}")

    def with_policy(self, name: str, factory: Callable[..., CachePolicy]
                    ) -> CachePolicyRegistry:
        """A registry that also knows ``name`` (replacing an existing entry)."""
        kept = tuple((n, f) for n, f in self.factories if n != name)
        return CachePolicyRegistry(kept + ((name, factory),))


def default_policies() -> CachePolicyRegistry:
    """The policies this package ships: ``full`` and ``mpcache`` (options: ``config``,
    ``n_layers``, ``backend_config``, ``debug``)."""
    return CachePolicyRegistry()


__all__ = ["CachePolicyRegistry", "MethodPolicy", "create_policy", "default_policies"]
