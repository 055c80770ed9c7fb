"""The ``mpcache`` cache policy: MPCache on the encrypted KV cache.

It drives the backend-agnostic algorithm (``crypten_mpcache.algorithm``) on a
``CryptenBackend``, so the secure selections are the plaintext algorithm's computation:

- End of prefill (``after_prefill``): look-once static eviction from the attention rows
  of the observation window that the secure prefill already computed; secure top-k with a
  public count; K and V compacted in original order by ONE token-level one-hot product
  with the premasked cache (only the one-hot is opened); sinks and window always kept.
  The compacted K and V are premasked again (one opening) and replace the layer's cache.
- Every decode step (``select``): the selecting layer appends the new key to its cluster
  boxes (incremental), scores clusters with one inner product each, runs the two-level
  hierarchical top-k (all KV heads in one batched call per level) and composes the chain
  of one-hots into one absolute one-hot over finest clusters. Every non-dense layer keeps
  its cache ALSO as premasked finest-cluster blocks (B, H, clusters, size * D), so the
  selected clusters are gathered by one product that opens only that small one-hot.
  Attention then runs on sinks + selected clusters + recent tokens.
- Cross-layer index sharing as configured: the policy sees layers in order each step,
  so a selecting layer stores its one-hots and the next layer reuses them.

Every shape depends on public values only (prompt length, step, budgets); which tokens
and clusters are kept stays secret. ``debug=True`` (tests only) reveals each selection
through the named ``secure.reveal.debug_reveal_selection`` and records it in ``records``
in the same form as the plaintext ``Session.records``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.plan import Amount, MethodPlan, resolve_tokens
from crypten_mpcache.algorithm.sharing import sharing_schedule
from crypten_mpcache.algorithm.static import StaticCounts
from crypten_mpcache.algorithm.torch_backend import TorchBackend
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.crypten_backend import CryptenBackend, CryptenBackendConfig
from crypten_mpcache.secure.kv_cache import CachePolicy, SecureKVLayer

PLAIN = TorchBackend()
_DERIVED = ("budget", "static_keep", "keep_ratios")  # fields that from_budget derives


def resolve_config(budget: Amount | None = None,
                   mpcache: MPCacheConfig | None = None) -> MPCacheConfig:
    """The MPCacheConfig of a run: ``from_budget(budget)`` on top of ``mpcache``'s other
    fields when a budget is given, else ``mpcache`` (default: the authors' config)."""
    if budget is None:
        return mpcache or MPCacheConfig()
    base = mpcache or MPCacheConfig()
    overrides = {f.name: getattr(base, f.name) for f in fields(base) if f.name not in _DERIVED}
    return MPCacheConfig.from_budget(budget, **overrides)


# --- one-hot constructions with public shapes ----------------------------------------


def compaction_matrix(backend: Any, onehot: Any, counts: StaticCounts) -> Any:
    """Token-level selection ``(B, H', keep, L)``: rows e_i of the sinks, the one-hot of
    the kept middle tokens, rows of the window. Equals ``static.compact(onehot, I_L)``,
    built without a product."""
    length, sink, window = counts.prompt_len, counts.sink, counts.window
    lead = tuple(onehot.shape[:-2])
    eye = torch.eye(length, dtype=torch.float64).expand(*lead, length, length)
    middle = backend.cat([torch.zeros(*lead, counts.n_select, sink, dtype=torch.float64),
                          onehot,
                          torch.zeros(*lead, counts.n_select, window, dtype=torch.float64)],
                         dim=-1)
    return backend.cat([eye[..., :sink, :], middle, eye[..., length - window:, :]], dim=-2)


def absolute_onehot(backend: Any, onehots: list[Any], counts: dynamic.StepCounts,
                    lead: tuple[int, ...]) -> Any:
    """Compose the per-level local one-hots into ``(B, H, k_last, G_last)`` over all
    finest clusters of the competing region (``dynamic.descend`` on the identity): the
    first level is a product with a public matrix (local), each later one a product of
    two small one-hots."""
    total = counts.totals[-1]
    per_top = total // counts.n_top
    eye = torch.eye(total, dtype=torch.float64).reshape(counts.n_top, per_top * total)
    grouped = eye.expand(*lead, counts.n_top, per_top * total)
    return dynamic.descend(backend, grouped, onehots, counts.sizes, 1)


def _operands(values: list[Any], names: list[str], premask: bool) -> list[Any]:
    """Fixed operands for ``values`` (one dealer request and one opening when premasked)."""
    from crypten_mpcache.secure.premask import FixedOperand, PlainOperand

    if premask:
        return FixedOperand.create_many(values, names=names)
    return [PlainOperand.create(v, name=n) for v, n in zip(values, names, strict=True)]


# --- per-layer state ---------------------------------------------------------------------


@dataclass
class ClusterLayout:
    """The layer's K and V as premasked finest-cluster blocks ``(B, H, count, size * D)``
    from token ``start`` on; grows by whole clusters as the cache fills (public)."""

    start: int
    size: int
    count: int = 0
    keys: Any = None
    values: Any = None

    def extend(self, layer: SecureKVLayer, rows: tuple[Any, Any]) -> None:
        """Add every cluster that is full in the layer's current rows (public length)."""
        length = int(rows[0].shape[-2])
        full = max(0, (length - self.start) // self.size)
        if full <= self.count:
            return
        lo, hi = self.start + self.count * self.size, self.start + full * self.size
        blocks = []
        for x in rows:
            b, h, _, d = x.shape
            blocks.append(x[..., lo:hi, :].reshape(b, h, full - self.count, self.size * d))
        prefix = f"mpcache/layer{layer.layer_idx}/clusters/{self.count}"
        new_k, new_v = _operands(blocks, [f"{prefix}/k", f"{prefix}/v"], layer.premask)
        if self.keys is None:
            self.keys, self.values = new_k, new_v
        else:
            self.keys = type(new_k).cat([self.keys, new_k], dim=-2)
            self.values = type(new_v).cat([self.values, new_v], dim=-2)
        self.count = full


@dataclass
class LayerState:
    """What the policy keeps per layer (in ``SecureKVLayer.state['mpcache']``)."""

    prompt_len: int
    seen: int
    step: int = 0
    clusters: ClusterState | None = None
    layout: ClusterLayout | None = None


@dataclass
class StepChoice:
    """A selecting layer's decision for this step, reused by the next layer."""

    counts: dynamic.StepCounts
    absolute: Any  # (B, Hkv, k_last, G_last) secret one-hot, or None
    clusters: torch.Tensor | None = None  # debug only: revealed finest cluster indices


# --- the policy --------------------------------------------------------------------------


@dataclass
class MPCachePolicy(CachePolicy):
    """MPCache on the encrypted KV cache (see the module docstring).

    ``n_layers`` is needed to place the layers that select alone at the tail of the
    model (index sharing); ``debug`` reveals selections (tests only).
    """

    config: MPCacheConfig = field(default_factory=MPCacheConfig)
    n_layers: int | None = None
    backend_config: CryptenBackendConfig = field(default_factory=CryptenBackendConfig)
    debug: bool = False
    name: str = "mpcache"
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.config, MPCacheConfig):
            raise TypeError(f"config must be an MPCacheConfig, got {type(self.config).__name__}")
        if self.n_layers is not None and self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        self.plan: MethodPlan = self.config.plan()
        self.backend = CryptenBackend(self.backend_config)
        self._static: dict[int, Any] = {}
        self._steps: dict[int, StepChoice] = {}

    # -- public counts ------------------------------------------------------------------
    def _budget(self, seen: int) -> int | None:
        budget = self.plan.budget
        return None if budget is None else resolve_tokens(budget, seen)

    def static_counts(self, prompt_len: int) -> StaticCounts | None:
        """Public counts of the static stage for this prompt length (None: no stage)."""
        if self.plan.static is None:
            return None
        return static.static_counts(self.plan.static, prompt_len, self._budget(prompt_len))

    def selector(self, layer: int) -> int:
        """The layer whose selection ``layer`` uses (index sharing)."""
        if not self.plan.share_layers:
            return layer
        if self.n_layers is None:
            raise ValueError("the mpcache policy with index sharing needs n_layers "
                             "(create it with n_layers=model.config.num_hidden_layers)")
        dense = tuple(d for d in self.plan.dense_layers if d < self.n_layers)
        schedule = sharing_schedule(self.n_layers, True, self.plan.alone_head,
                                    self.plan.alone_tail, dense)
        return schedule[layer]

    def _selects_dynamically(self, layer: int) -> bool:
        return self.plan.decode == "select" and layer not in self.plan.dense_layers

    # -- prefill ------------------------------------------------------------------------
    def prefill_window(self, prompt_len: int) -> int:
        counts = self.static_counts(prompt_len)
        return counts.window if counts is not None and counts.evicts else 0

    def after_prefill(self, layer: SecureKVLayer, window_probs: Any | None) -> None:
        index = layer.layer_idx
        length = layer.get_seq_length()
        state = LayerState(prompt_len=length, seen=length)
        layer.state["mpcache"] = state
        counts = self.static_counts(length)
        kept = None
        with operator_scope("static_eviction"):
            if counts is not None and counts.evicts:
                kept = self._evict(layer, window_probs, counts)
            if self._selects_dynamically(index):
                spec = self.plan.dynamic
                state.layout = ClusterLayout(spec.sink, spec.cluster_sizes[-1])
                if self.selector(index) == index:
                    state.clusters = ClusterState(self.backend, spec.cluster_sizes, spec.sink,
                                                  spec.alpha, spec.similarity)
                    state.clusters.build(layer.keys.value())
        if self.debug:
            self._record(index, 0, "prefill", layer.get_seq_length(), positions=kept)

    def _evict(self, layer: SecureKVLayer, window_probs: Any, counts: StaticCounts
               ) -> torch.Tensor | None:
        """Static eviction of one layer; returns the kept positions in debug mode."""
        index, selector = layer.layer_idx, self.selector(layer.layer_idx)
        if selector != index and selector in self._static:
            onehot, kept = self._static[selector]
        else:
            if window_probs is None:
                raise ValueError("static eviction needs the prefill's window probabilities")
            spec = self.plan.static
            importance = static.head_importance(self.backend, window_probs,
                                                int(layer.keys.shape[1]), spec.scope)
            importance = static.max_pool(self.backend, importance, spec.pool_kernel)
            onehot = static.select_static(self.backend, importance, counts)
            kept = self._kept_positions(onehot, counts) if self.debug else None
            self._static[index] = (onehot, kept)
        selection = compaction_matrix(self.backend, onehot, counts)
        keys = self.backend.gather(selection, layer.keys)
        values = self.backend.gather(selection, layer.values)
        names = [f"mpcache/layer{index}/static/k", f"mpcache/layer{index}/static/v"]
        layer.replace(*_operands([keys, values], names, layer.premask))
        return kept

    def _kept_positions(self, onehot: Any, counts: StaticCounts) -> torch.Tensor:
        """Debug: reveal the static one-hot; original positions kept ``(B, H', keep)``."""
        plain = self.backend.reveal(onehot).double()
        positions = torch.arange(counts.prompt_len, dtype=torch.float64)
        positions = positions.expand(*plain.shape[:-2], -1).unsqueeze(-1)
        return static.compact(PLAIN, plain, positions, counts)[..., 0].round().long()

    # -- decode -------------------------------------------------------------------------
    def select(self, layer: SecureKVLayer, query: Any) -> tuple[Any, Any]:
        index = layer.layer_idx
        state: LayerState = layer.state["mpcache"]
        state.step += 1
        state.seen += 1
        if not self._selects_dynamically(index):
            if self.debug:
                self._record(index, state.step, "decode", layer.get_seq_length())
            return layer.keys, layer.values
        choice = self._choice(layer, state, query)
        counts = choice.counts
        if counts.dense:
            keys, values = layer.keys, layer.values
        else:
            keys, values = self._attended(layer, state, choice)
        if self.debug:
            self._record(index, state.step, "decode", int(keys.shape[-2]),
                         clusters=None if counts.dense else choice.clusters)
        return keys, values

    def _choice(self, layer: SecureKVLayer, state: LayerState, query: Any) -> StepChoice:
        """This step's selection: computed by a selecting layer, reused by the next."""
        index, selector = layer.layer_idx, self.selector(layer.layer_idx)
        length = layer.get_seq_length()
        if selector != index:
            choice = self._steps[selector]
            if choice.counts.n_tokens != length:
                raise RuntimeError(f"layer {index} cannot reuse layer {selector}'s selection")
            return choice
        spec = self.plan.dynamic
        with operator_scope("similarity"):
            state.clusters.append(layer.keys.value()[..., -1:, :])
            counts = dynamic.step_counts(spec, length, self._budget(state.seen))
            onehots = dynamic.select(self.backend, query, state.clusters, counts,
                                     spec.similarity)
        absolute = None
        if onehots:
            with operator_scope("gather"):
                absolute = absolute_onehot(self.backend, onehots, counts,
                                           tuple(onehots[0].shape[:-2]))
        clusters = None
        if self.debug:
            revealed = [self.backend.reveal(o).double() for o in onehots]
            clusters = dynamic.finest_clusters(PLAIN, revealed, counts)
        choice = StepChoice(counts, absolute, clusters)
        self._steps[index] = choice
        return choice

    def _attended(self, layer: SecureKVLayer, state: LayerState, choice: StepChoice
                  ) -> tuple[Any, Any]:
        """Sinks + gathered clusters + recent rows of K and V, as operands for attention."""
        import crypten

        from crypten_mpcache.secure.premask import PlainOperand

        counts = choice.counts
        rows = (layer.keys.value(), layer.values.value())
        parts: list[list[Any]] = [[x[..., : counts.sink, :]] for x in rows]
        if choice.absolute is not None:
            state.layout.extend(layer, rows)
            pad = state.layout.count - counts.totals[-1]
            onehot = choice.absolute
            if pad:
                zeros = torch.zeros(*onehot.shape[:-1], pad, dtype=torch.float64)
                onehot = self.backend.cat([onehot, zeros], dim=-1)
            for part, blocks, x in zip(parts, (state.layout.keys, state.layout.values), rows,
                                       strict=True):
                picked = self.backend.gather(onehot, blocks)
                b, h, k, _ = picked.shape
                part.append(picked.reshape(b, h, k * counts.sizes[-1], x.shape[-1]))
        start = counts.recent_start + counts.recent_drop
        for part, x in zip(parts, rows, strict=True):
            part.append(x[..., start:, :])
        keys, values = (crypten.cat(p, dim=-2) for p in parts)
        return PlainOperand(keys), PlainOperand(values)

    # -- debug --------------------------------------------------------------------------
    def _record(self, layer: int, step: int, phase: str, attended: int,
                positions: torch.Tensor | None = None,
                clusters: torch.Tensor | None = None) -> None:
        self.records.append({"step": step, "layer": layer, "phase": phase,
                             "selector": self.selector(layer), "attended": attended,
                             "positions": positions, "clusters": clusters})


def create_policy(config: MPCacheConfig | None = None, n_layers: int | None = None,
                  budget: Amount | None = None, **options: Any) -> MPCachePolicy:
    """Registry factory: ``default_policies().create("mpcache", config=..., n_layers=...)``."""
    return MPCachePolicy(config=resolve_config(budget, config), n_layers=n_layers, **options)


__all__ = ["ClusterLayout", "MPCachePolicy", "absolute_onehot", "compaction_matrix",
           "create_policy", "resolve_config"]
