"""The ``mpcache`` cache policy: MPCache on the encrypted KV cache.

It drives the backend-agnostic algorithm (``crypten_mpcache.algorithm``) on a
``CryptenBackend``, so the secure selections are the plaintext algorithm's computation:

- End of prefill (``after_prefill``): look-once static eviction from the attention rows
  of the observation window that the secure prefill already computed; secure top-k with a
  public count; K and V compacted in original order by ONE token-level one-hot product
  with the premasked cache (only the one-hot is opened); sinks and window always kept.
  The compacted K and V are premasked again (one opening) and replace the layer's cache.
- Every decode step (``select``): the selecting layer appends the new key to its cluster
  boxes (incremental); the representative of every full cluster is premasked once
  (``RepOperands``), so scoring all clusters opens only the summed query; the
  candidates' scores are picked by the chain of one-hots; the two-level hierarchical
  top-k runs on them (all KV heads in one batched call per level) and the chain is
  composed into one absolute one-hot over finest clusters, premasked once per step.
  Attention then reads sinks + selected clusters + recent tokens through
  ``SelectedKeys`` / ``SelectedValues``: scores first over the whole premasked cache,
  then selection by the one-hot (see ``TokenSelection``); no gathered K or V is ever
  re-opened and the cache is never masked again.
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
from crypten_mpcache.algorithm.clusters import ClusterState, group_queries
from crypten_mpcache.algorithm.plan import Amount, MethodPlan, budget_tokens
from crypten_mpcache.algorithm.sharing import sharing_schedule
from crypten_mpcache.algorithm.static import StaticCounts
from crypten_mpcache.algorithm.torch_backend import TorchBackend
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.crypten_backend import (
    CryptenBackend,
    CryptenBackendConfig,
    secret,
)
from crypten_mpcache.secure.kv_cache import CachePolicy, SecureKVLayer

PLAIN = TorchBackend()
_DERIVED = ("budget", "static_keep", "keep_ratios")  # fields that from_budget derives


def resolve_config(budget: Amount | None = None,
                   mpcache: MPCacheConfig | None = None) -> MPCacheConfig:
    """The MPCacheConfig of a run: ``from_budget(budget)`` on top of ``mpcache``'s other
    fields when a budget is given, else ``mpcache``; without ``mpcache`` the tuned
    ``MPCacheConfig.default()``, as in ``eval`` and ``bench`` (``MPCacheConfig.paper()`` is
    the authors' configuration)."""
    base = mpcache or MPCacheConfig.default()
    if budget is None:
        return base
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


def absolute_onehot(backend: Any, onehots: list[Any], counts: dynamic.StepCounts) -> Any:
    """Compose the per-level local one-hots into ``(B, H, k_last, G_last)`` over all
    finest clusters of the competing region (``dynamic.descend`` on the identity).

    Level l's one-hot ``(k_l, k_(l-1) f)`` picks children of the clusters kept so far;
    for each child slot t its columns ``(k_l, k_(l-1))`` times the absolute one-hot so
    far ``(k_(l-1), G_(l-1))`` give the absolute columns ``c f + t``. Under MPC each
    composition is one Beaver product that opens these two small one-hots only, not the
    ``k_(l-1) f x G_last`` expansion (``(O_(l-1) (x) I_f) @ I``) of a product with the
    identity."""
    absolute = onehots[0]
    for level in range(1, len(onehots)):
        fan = counts.sizes[level - 1] // counts.sizes[level]
        absolute = _compose(backend, onehots[level], absolute, fan)
    return absolute


def _compose(backend: Any, child: Any, parent: Any, fan: int) -> Any:
    """``child (B, H, k, p f)`` over the children of ``parent (B, H, p, G)``'s rows ->
    ``(B, H, k, G f)`` over all children, column ``c f + t`` for child t of cluster c."""
    batch, heads, kept, width = child.shape
    rows = width // fan
    by_slot = child.reshape(batch, heads, kept, rows, fan).permute(0, 1, 4, 2, 3)
    slots = backend.gather(by_slot.reshape(batch, heads, fan * kept, rows), parent)
    groups = int(slots.shape[-1])
    slots = slots.reshape(batch, heads, fan, kept, groups).permute(0, 1, 3, 4, 2)
    return slots.reshape(batch, heads, kept, groups * fan)


def _operands(values: list[Any], names: list[str], premask: bool) -> list[Any]:
    """Fixed operands for ``values`` (one dealer request and one opening when premasked)."""
    from crypten_mpcache.secure.premask import FixedOperand, PlainOperand

    if premask:
        return FixedOperand.create_many(values, names=names)
    return [PlainOperand.create(v, name=n) for v, n in zip(values, names, strict=True)]


# --- per-layer state ---------------------------------------------------------------------


@dataclass
class RepOperands:
    """Premasked cluster representatives, one growing operand ``(B, H, C_l, D)`` per
    level. A full cluster's representative never changes, so it is masked and opened
    ONCE (all of them at the end of prefill, then one per newly full cluster); each
    step's scores ``q . rep`` then open only the summed query."""

    levels: int
    operands: list[Any] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.operands = [None] * self.levels
        self.counts = [0] * self.levels

    def sync(self, clusters: ClusterState, premask: bool, prefix: str) -> None:
        """Premask the representatives of the clusters that became full (one opening)."""
        new, names, where = [], [], []
        for level, boxes in enumerate(clusters.levels):
            have = self.counts[level]
            if boxes.count > have:
                new.append(boxes.rep[..., have: boxes.count, :])
                names.append(f"{prefix}/rep{level}/{have}")
                where.append((level, boxes.count))
        if not new:
            return
        for (level, count), operand in zip(where, _operands(new, names, premask), strict=True):
            old = self.operands[level]
            self.operands[level] = operand if old is None else type(operand).cat(
                [old, operand], dim=-2)
            self.counts[level] = count

    def scores(self, query_sum: Any, level: int) -> Any:
        """``(B, H, C_l)`` scores of every full level-l cluster; opens ``query_sum`` only."""
        return self.operands[level].transpose(-1, -2).rmatmul(query_sum)[..., 0, :]


@dataclass
class LayerState:
    """What the policy keeps per layer (in ``SecureKVLayer.state['mpcache']``)."""

    prompt_len: int
    seen: int
    step: int = 0
    clusters: ClusterState | None = None
    reps: RepOperands | None = None


@dataclass
class StepChoice:
    """A selecting layer's decision for this step, reused by the next layer."""

    counts: dynamic.StepCounts
    absolute: Any  # (B, Hkv, k_last, G_last) one-hot as a fixed operand, or None
    clusters: torch.Tensor | None = None  # debug only: revealed finest cluster indices


# --- attention on the selected tokens: scores first, then select -----------------------


@dataclass(frozen=True)
class TokenSelection:
    """Which cache columns a decode step attends to: the sinks and the recent tokens
    (PUBLIC positions: plain slices) and ``k`` finest clusters of the competing region,
    chosen by the secret one-hot ``onehot`` ``(B, H, k, G)`` (a fixed operand: masked
    and opened once per step, then every product with it opens only the other side).

    Why scores first: gathering K and V by the one-hot would produce fresh secrets that
    q K_sel^T and p V_sel re-open (2 x H k s D elements). Instead q K^T runs on the
    whole premasked cache (opens q only), the one-hot picks the selected clusters'
    scores (opens the H_q x region scores), the softmax runs over the attended tokens
    only, the one-hot scatters p back (opens H_q x k s) and p V runs on the premasked
    V (opens H_q x N). Opened elements per step: H_q (D + region + k s + N) + H k G,
    against H_q D + 2 H k G + 2 H_kv (sink + k s + recent) D + H_q attended for gathering.
    """

    counts: dynamic.StepCounts
    onehot: Any | None

    @property
    def kept(self) -> int:
        return 0 if self.onehot is None else self.counts.ks[-1]

    @property
    def recent_from(self) -> int:
        return self.counts.recent_start + self.counts.recent_drop

    @property
    def attended(self) -> int:
        c = self.counts
        return c.sink + self.kept * c.sizes[-1] + c.n_tokens - self.recent_from

    def pick(self, scores: Any) -> Any:
        """``(B, H, r, N)`` -> ``(B, H, r, attended)``: the attended columns in order."""
        c = self.counts
        parts = [scores[..., : c.sink]]
        if self.onehot is not None:
            b, h, r, _ = scores.shape
            size, groups = c.sizes[-1], c.totals[-1]
            region = scores[..., c.sink: c.recent_start].reshape(b, h, r, groups, size)
            region = region.transpose(-1, -2).reshape(b, h, r * size, groups)
            picked = self.onehot.transpose(-1, -2).rmatmul(region)  # (B, H, r s, k)
            picked = picked.reshape(b, h, r, size, self.kept).transpose(-1, -2)
            parts.append(picked.reshape(b, h, r, self.kept * size))
        parts.append(scores[..., self.recent_from:])
        return _cat_columns(parts)

    def scatter(self, probs: Any) -> Any:
        """``(B, H, r, attended)`` -> ``(B, H, r, N)`` with zeros where nothing is
        attended (the inverse placement of ``pick``)."""
        c = self.counts
        b, h, r, _ = probs.shape
        size, end = c.sizes[-1], c.sink + self.kept * c.sizes[-1]
        parts = [probs[..., : c.sink]]
        if self.onehot is not None:
            picked = probs[..., c.sink: end].reshape(b, h, r, self.kept, size)
            picked = picked.transpose(-1, -2).reshape(b, h, r * size, self.kept)
            region = self.onehot.rmatmul(picked)  # (B, H, r s, G)
            region = region.reshape(b, h, r, size, c.totals[-1]).transpose(-1, -2)
            parts.append(region.reshape(b, h, r, c.totals[-1] * size))
        else:
            parts.append(torch.zeros(b, h, r, c.recent_start - c.sink, dtype=torch.float64))
        parts.append(torch.zeros(b, h, r, c.recent_drop, dtype=torch.float64))
        parts.append(probs[..., end:])
        return _cat_columns(parts)


def _cat_columns(parts: list[Any]) -> Any:
    """Concatenate secret and public (zero) column blocks; empty blocks are skipped."""
    import crypten

    return crypten.cat([secret(p) for p in parts if p.shape[-1] > 0], dim=-1)


class SelectedKeys:
    """K as attention sees it this step: ``shape`` counts the attended tokens only;
    ``transpose(-1, -2).rmatmul(q)`` = q K_attended^T, computed scores first."""

    def __init__(self, keys: Any, selection: TokenSelection) -> None:
        self._keys, self._selection = keys, selection

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._keys.shape[:-2], self._selection.attended,
                           self._keys.shape[-1]))

    def transpose(self, dim0: int, dim1: int) -> _SelectedKeysT:
        if {dim0 % 4, dim1 % 4} != {2, 3}:
            raise ValueError("selected keys only support transpose(-1, -2)")
        return _SelectedKeysT(self._keys, self._selection)


class _SelectedKeysT:
    def __init__(self, keys: Any, selection: TokenSelection) -> None:
        self._keys, self._selection = keys, selection

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._keys.shape[:-2], self._keys.shape[-1],
                           self._selection.attended))

    def rmatmul(self, x: Any) -> Any:
        """``x (B, H, r, D)`` -> scores ``(B, H, r, attended)``; opens x, then the
        region scores (against the premasked one-hot)."""
        scores = self._keys.transpose(-1, -2).rmatmul(x)
        with operator_scope("gather"):
            return self._selection.pick(scores)


class SelectedValues:
    """V as attention sees it this step: ``rmatmul(p)`` scatters p back over the whole
    cache (one-hot product, opens p) and multiplies with the premasked V (opens p_full)."""

    def __init__(self, values: Any, selection: TokenSelection) -> None:
        self._values, self._selection = values, selection

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._values.shape[:-2], self._selection.attended,
                           self._values.shape[-1]))

    def rmatmul(self, probs: Any) -> Any:
        with operator_scope("gather"):
            full = self._selection.scatter(probs)
        return self._values.rmatmul(full)


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
        return None if budget is None else budget_tokens(budget, seen)

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
            if self._selects_dynamically(index) and self.selector(index) == index:
                spec = self.plan.dynamic
                state.clusters = ClusterState(self.backend, spec.cluster_sizes, spec.sink,
                                              spec.alpha, spec.similarity)
                state.clusters.build(layer.keys.value())
                if spec.similarity != "maxbound":
                    state.reps = RepOperands(len(spec.cluster_sizes))
                    state.reps.sync(state.clusters, layer.premask, f"mpcache/layer{index}")
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
            level_scores = None
            if state.reps is not None:
                state.reps.sync(state.clusters, layer.premask, f"mpcache/layer{index}")
                n_kv = int(layer.keys.shape[1])
                query_sum = group_queries(query, n_kv).sum(2, keepdim=True)
                level_scores = lambda level: state.reps.scores(query_sum, level)  # noqa: E731
            onehots = dynamic.select(self.backend, query, state.clusters, counts,
                                     spec.similarity, level_scores)
        absolute = None
        if onehots:
            with operator_scope("gather"):
                absolute = absolute_onehot(self.backend, onehots, counts)
                name = f"mpcache/layer{index}/step{state.step}/selection"
                absolute = _operands([absolute], [name], layer.premask)[0]
        clusters = None
        if self.debug:
            revealed = [self.backend.reveal(o).double() for o in onehots]
            clusters = dynamic.finest_clusters(PLAIN, revealed, counts)
        choice = StepChoice(counts, absolute, clusters)
        self._steps[index] = choice
        return choice

    def _attended(self, layer: SecureKVLayer, state: LayerState, choice: StepChoice
                  ) -> tuple[Any, Any]:
        """Views of K and V restricted to sinks + selected clusters + recent tokens."""
        selection = TokenSelection(choice.counts, choice.absolute)  # None: public slices
        return SelectedKeys(layer.keys, selection), SelectedValues(layer.values, selection)

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


__all__ = ["MPCachePolicy", "RepOperands", "SelectedKeys", "SelectedValues", "TokenSelection",
           "absolute_onehot", "compaction_matrix", "create_policy", "resolve_config"]
