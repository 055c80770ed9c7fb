"""``apply(model, method)``: run a KV-cache method on a plaintext transformers model.

kvpress-style context manager::

    with apply(model, MPCacheConfig.from_budget(0.1)) as session:
        model.generate(input_ids, max_new_tokens=16, do_sample=False)
    session.records  # which tokens / clusters each layer attended at each step

Inside the context the model's attention implementation is switched to a function
registered through transformers' ``AttentionInterface`` (and the original mask function
under the same name), and a forward pre-hook on every attention module captures the
layer's cache. Prefill runs the original attention, then the static stage compacts the
layer's cache (one-hot gather, original RoPE kept). Every decode step selects inside the
attention call (query-aware) and attends only to the selected tokens. Everything is
undone on exit, even on error. The algorithm itself lives in ``crypten_mpcache.algorithm``
and runs here on ``TorchBackend``.

Supported: Llama-family models (q/k/v projections, RoPE, ``cache.update`` then the
registered attention function), ``DynamicCache``, batch size 1 or unpadded batches,
``generate`` (greedy) and manual loops with one new token per step. A multi-token forward
on top of a cache is attended densely (no selection) and then enters the cache.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.models.llama.modeling_llama import eager_attention_forward

from crypten_mpcache.algorithm import dynamic, static
from crypten_mpcache.algorithm.backend import onehot_to_indices
from crypten_mpcache.algorithm.clusters import ClusterState
from crypten_mpcache.algorithm.plan import Amount, MethodPlan, budget_tokens
from crypten_mpcache.algorithm.sharing import sharing_schedule
from crypten_mpcache.algorithm.static import StaticCounts
from crypten_mpcache.algorithm.torch_backend import TorchBackend

_NAMES = itertools.count()


class Method(Protocol):
    """Anything that lowers to a MethodPlan (MPCacheConfig, the baseline configs)."""

    def plan(self) -> MethodPlan: ...


class EvictedLayer(DynamicLayer):
    """A DynamicLayer holding fewer rows than tokens seen; reports the logical length.

    Position ids of manual forward loops come from ``cache.get_seq_length()``: reporting
    the number of tokens seen (not stored) keeps new tokens at ``prompt_len + t``.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, evicted: int) -> None:
        super().__init__()
        self.keys, self.values, self.evicted = keys, values, evicted
        self.device = keys.device
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.keys.shape[-2] + self.evicted


@dataclass
class LayerState:
    """Per-layer plaintext state of one sequence (reset at every fresh prefill)."""

    prompt_len: int
    seen: int
    positions: torch.Tensor  # (B, Hkv, N) original position of every cache row
    budget: Amount | None  # ratio of the tokens seen so far, or a count
    frozen: int = 0
    recent: int = 0
    clusters: ClusterState | None = None
    scores: torch.Tensor | None = None  # H2O accumulated attention (B, H', N)
    step: int = 0

    @property
    def budget_tokens(self) -> int | None:
        """Tokens a decode query may attend now (public: depends on lengths only)."""
        return None if self.budget is None else budget_tokens(self.budget, self.seen)


@dataclass
class Session:
    """What ``apply`` yields: the plan, the sharing schedule and the debug records.

    Each record is a dict with: step (0 = prefill, t = t-th decode forward), layer,
    phase ("prefill" | "decode" | "extend"), selector (layer whose selection was used),
    cache (rows stored after the step), attended (tokens attended by the decode query),
    positions ((B, Hkv, n) original positions kept at prefill / attended at decode),
    clusters ((B, Hkv, k) finest-level cluster indices selected, or None).
    """

    plan: MethodPlan
    schedule: tuple[int, ...]
    record: bool = True
    records: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[int, LayerState] = field(default_factory=dict)
    caches: dict[int, Any] = field(default_factory=dict)
    static_choice: dict[int, torch.Tensor] = field(default_factory=dict)
    step_choice: dict[int, tuple[list[torch.Tensor], dynamic.StepCounts]] = field(
        default_factory=dict)

    def decode_records(self, layer: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records
                if r["phase"] == "decode" and (layer is None or r["layer"] == layer)]

    def max_attended(self, skip_dense: bool = True) -> int:
        """Largest number of tokens any decode query attended (dense layers skipped)."""
        dense = set(self.plan.dense_layers) if skip_dense else set()
        counts = [r["attended"] for r in self.decode_records() if r["layer"] not in dense]
        return max(counts, default=0)


BACKEND = TorchBackend()


def _full_plan() -> MethodPlan:
    return MethodPlan(name="full", static=None, decode="full")


@contextlib.contextmanager
def apply(model: torch.nn.Module, method: Method | MethodPlan | None,
          record: bool = True) -> Iterator[Session]:
    """Run ``model`` with ``method`` inside the context; always restore it on exit."""
    plan = _full_plan() if method is None else (
        method if isinstance(method, MethodPlan) else method.plan())
    config = model.config
    n_layers = config.num_hidden_layers
    schedule = sharing_schedule(n_layers, plan.share_layers, plan.alone_head, plan.alone_tail,
                                tuple(d for d in plan.dense_layers if d < n_layers))
    session = Session(plan=plan, schedule=schedule, record=record)
    original = config._attn_implementation or "eager"
    name = f"crypten_mpcache_{next(_NAMES)}"
    original_fn = ALL_ATTENTION_FUNCTIONS.get_interface(original, eager_attention_forward)
    engine = _Engine(session, original_fn)
    hooks = []
    AttentionInterface.register(name, engine.attention)
    if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    try:
        for module in _attention_modules(model):
            hooks.append(module.register_forward_pre_hook(engine.capture_cache, with_kwargs=True))
        config._attn_implementation = name
        yield session
    finally:
        config._attn_implementation = original
        for hook in hooks:
            hook.remove()
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)


def generate_fed(model: torch.nn.Module, method: Method | MethodPlan | None,
                 prompt_ids: list[int], steps: int, feed: list[int] | None = None,
                 record: bool = False) -> tuple[list[int], torch.Tensor, list[dict[str, Any]]]:
    """``steps`` greedy steps under ``apply(model, method)``, step by step through the cache
    (a cache policy acts per step): (argmax ids, (steps, vocab) logits, debug records).

    With ``feed`` the token after step t is ``feed[t]`` instead of the argmax, so this run
    sees the same inputs as another (e.g. private) run that produced ``feed``.
    """
    ids: list[int] = []
    logits: list[torch.Tensor] = []
    with torch.no_grad(), apply(model, method, record=record) as session:
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        for step in range(steps):
            last = out.logits[0, -1]
            logits.append(last)
            ids.append(int(last.argmax()))
            if step + 1 < steps:
                token = ids[-1] if feed is None else feed[step]
                out = model(torch.tensor([[token]]), past_key_values=out.past_key_values,
                            use_cache=True)
    return ids, torch.stack(logits), session.records


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    modules = [m for m in model.modules()
               if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "k_proj")]
    if not modules:
        raise TypeError("no Llama-style attention modules (q_proj/k_proj/layer_idx) found")
    return modules


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
            causal_offset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention over the given rows; returns (output (B, q, Hq, D), probs)."""
    groups = query.shape[1] // key.shape[1]
    scores = torch.matmul(query, _repeat_kv(key, groups).transpose(2, 3)) * scaling
    if causal_offset is not None:
        q_pos = torch.arange(query.shape[2], device=query.device).unsqueeze(1) + causal_offset
        visible = torch.arange(key.shape[2], device=key.device).unsqueeze(0) <= q_pos
        scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = torch.matmul(probs, _repeat_kv(value, groups))
    return out.transpose(1, 2).contiguous(), probs


class _Engine:
    """The registered attention function and the per-layer bookkeeping behind it."""

    def __init__(self, session: Session, original_fn: Any) -> None:
        self.session = session
        self.original_fn = original_fn

    @property
    def plan(self) -> MethodPlan:
        return self.session.plan

    def capture_cache(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.session.caches[module.layer_idx] = cache

    # -- dispatch ---------------------------------------------------------------------
    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        layer = module.layer_idx
        cache = self.session.caches.get(layer)
        q_len, kv_len = query.shape[2], key.shape[2]
        state = self.session.layers.get(layer)
        if cache is None or q_len == kv_len or state is None:
            out = self.original_fn(module, query, key, value, attention_mask,
                                   scaling=scaling, dropout=dropout, **kwargs)
            if cache is not None and q_len == kv_len:
                self._prefill(module, query, key, value, cache, scaling)
            return out
        if q_len == 1:
            return self._decode(module, state, query, key, value, attention_mask, scaling,
                                dropout, cache, **kwargs)
        return self._extend(module, state, query, key, value, scaling)

    # -- prefill ----------------------------------------------------------------------
    def _prefill(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, cache: Any, scaling: float) -> None:
        layer = module.layer_idx
        plan = self.plan
        batch, n_kv, length, _ = key.shape
        positions = torch.arange(length, device=key.device).view(1, 1, -1).expand(batch, n_kv, -1)
        state = LayerState(prompt_len=length, seen=length, positions=positions,
                           budget=plan.budget)
        self.session.layers[layer] = state
        if plan.static is not None:
            counts = static.static_counts(plan.static, length, state.budget_tokens)
            if plan.static.score == "accumulated":
                _, probs = _attend(query, key, key, scaling, causal_offset=0)
                state.scores = static.head_importance(BACKEND, probs.float(), n_kv,
                                                      plan.static.scope)
            if counts.evicts:
                onehot = self._static_choice(layer, query, key, scaling, counts)
                keys = static.compact(BACKEND, onehot, key, counts)
                values = static.compact(BACKEND, onehot, value, counts)
                state.positions = self._compact_positions(onehot, positions, counts)
                if state.scores is not None:
                    state.scores = static.compact_scores(BACKEND, onehot, state.scores, counts)
                _replace_layer(cache, layer, keys, values, length - counts.keep)
                key = keys
            state.frozen = counts.sink + counts.n_select
            state.recent = counts.window
        if plan.decode == "select" and layer not in plan.dense_layers and \
                self.session.schedule[layer] == layer:
            spec = plan.dynamic
            state.clusters = ClusterState(BACKEND, spec.cluster_sizes, spec.sink, spec.alpha,
                                          spec.similarity)
            state.clusters.build(key)
        self._record(layer, "prefill", state, key.shape[-2], positions=state.positions)

    def _static_choice(self, layer: int, query: torch.Tensor, key: torch.Tensor,
                       scaling: float, counts: StaticCounts) -> torch.Tensor:
        """This layer's static one-hot, or its selector layer's (index sharing)."""
        selector = self.session.schedule[layer]
        if selector != layer and selector in self.session.static_choice:
            return self.session.static_choice[selector]
        spec = self.plan.static
        state = self.session.layers[layer]
        if spec.score == "none":
            importance = key.new_zeros(key.shape[0], 1, counts.prompt_len)
        elif spec.score == "accumulated":
            importance = state.scores
        else:
            rows = counts.window
            _, probs = _attend(query[..., -rows:, :], key, key, scaling,
                               causal_offset=counts.prompt_len - rows)
            importance = static.head_importance(BACKEND, probs.float(), key.shape[1],
                                                spec.scope)
            importance = static.max_pool(BACKEND, importance, spec.pool_kernel)
        onehot = static.select_static(BACKEND, importance, counts)
        self.session.static_choice[layer] = onehot
        return onehot

    @staticmethod
    def _compact_positions(onehot: torch.Tensor, positions: torch.Tensor,
                           counts: StaticCounts) -> torch.Tensor:
        moved = static.compact(BACKEND, onehot.double(), positions.double().unsqueeze(-1), counts)
        return moved[..., 0].round().long()

    # -- decode -----------------------------------------------------------------------
    def _decode(self, module: torch.nn.Module, state: LayerState, query: torch.Tensor,
                key: torch.Tensor, value: torch.Tensor, attention_mask: Any, scaling: float,
                dropout: float, cache: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        layer = module.layer_idx
        plan = self.plan
        state.step += 1
        new_pos = state.positions.new_full((*state.positions.shape[:2], 1), state.seen)
        state.positions = torch.cat([state.positions, new_pos], dim=-1)
        state.seen += 1
        if state.scores is not None:
            state.scores = torch.cat([state.scores, state.scores.new_zeros(
                (*state.scores.shape[:2], 1))], dim=-1)
        dense = plan.decode == "full" or layer in plan.dense_layers
        if plan.decode == "window" and not dense:
            key, value = self._slide(layer, state, key, value, cache)
        if plan.decode == "heavy" and not dense:
            key, value = self._evict_lightest(layer, state, key, value, cache)
        clusters = None
        if plan.decode == "select" and not dense:
            onehots, counts = self._step_choice(layer, state, query, key)
            attended_pos = dynamic.gather_tokens(
                BACKEND, state.positions.unsqueeze(-1).double(),
                [o.double() for o in onehots], counts)[..., 0].round().long()
            if not counts.dense:
                key = dynamic.gather_tokens(BACKEND, key, onehots, counts)
                value = dynamic.gather_tokens(BACKEND, value, onehots, counts)
                clusters = dynamic.finest_clusters(BACKEND, onehots, counts) \
                    if self.session.record else None
        else:
            attended_pos = state.positions
        everything = key.shape[-2] == state.seen
        if everything and state.scores is None:
            out = self.original_fn(module, query, key, value, attention_mask,
                                   scaling=scaling, dropout=dropout, **kwargs)
        else:
            out, probs = _attend(query, key, value, scaling)
            if state.scores is not None:
                heads = static.head_importance(BACKEND, probs.float(), key.shape[1],
                                               "layer" if state.scores.shape[1] == 1
                                               else "kv_head")
                state.scores = state.scores + heads
            out = (out, None)
        self._record(layer, "decode", state, key.shape[-2], positions=attended_pos,
                     clusters=clusters, cache_rows=cache.layers[layer].keys.shape[-2])
        return out

    def _step_choice(self, layer: int, state: LayerState, query: torch.Tensor,
                     key: torch.Tensor) -> tuple[list[torch.Tensor], dynamic.StepCounts]:
        selector = self.session.schedule[layer]
        if selector != layer:
            onehots, counts = self.session.step_choice[selector]
            if counts.n_tokens != key.shape[-2]:
                raise RuntimeError(f"layer {layer} cannot reuse layer {selector}'s selection")
            return onehots, counts
        state.clusters.append(key[..., -1:, :])
        counts = dynamic.step_counts(self.plan.dynamic, key.shape[-2], state.budget_tokens)
        onehots = dynamic.select(BACKEND, query, state.clusters, counts,
                                 self.plan.dynamic.similarity)
        self.session.step_choice[layer] = (onehots, counts)
        return onehots, counts

    def _slide(self, layer: int, state: LayerState, key: torch.Tensor, value: torch.Tensor,
               cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the frozen prefix and the most recent rows, ``budget`` rows in all."""
        rows, budget = key.shape[-2], state.budget_tokens
        if rows <= budget:
            return key, value
        drop = rows - budget
        keep = lambda x: torch.cat([x[..., : state.frozen, :], x[..., state.frozen + drop:, :]],
                                   dim=-2)
        key, value = keep(key), keep(value)
        state.positions = keep(state.positions.unsqueeze(-1))[..., 0]
        _replace_layer(cache, layer, key, value, state.seen - key.shape[-2])
        return key, value

    def _evict_lightest(self, layer: int, state: LayerState, key: torch.Tensor,
                        value: torch.Tensor, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """H2O: drop the lowest accumulated-score rows outside the recent window."""
        rows, budget = key.shape[-2], state.budget_tokens
        if rows <= budget:
            return key, value
        recent = min(state.recent, budget)
        counts = StaticCounts(prompt_len=rows, sink=0, window=recent, n_select=budget - recent)
        onehot = static.select_static(BACKEND, state.scores, counts)
        key = static.compact(BACKEND, onehot.to(key.dtype), key, counts)
        value = static.compact(BACKEND, onehot.to(value.dtype), value, counts)
        state.positions = self._compact_positions(onehot, state.positions, counts)
        state.scores = static.compact_scores(BACKEND, onehot, state.scores, counts)
        _replace_layer(cache, layer, key, value, state.seen - key.shape[-2])
        return key, value

    # -- several new tokens on top of a cache -----------------------------------------
    def _extend(self, module: torch.nn.Module, state: LayerState, query: torch.Tensor,
                key: torch.Tensor, value: torch.Tensor, scaling: float) -> tuple[Any, Any]:
        new = query.shape[2]
        out, _ = _attend(query, key, value, scaling, causal_offset=key.shape[-2] - new)
        extra = torch.arange(state.seen, state.seen + new,
                             device=state.positions.device).view(1, 1, -1)
        state.positions = torch.cat(
            [state.positions, extra.expand(*state.positions.shape[:2], -1)], dim=-1)
        state.seen += new
        if state.scores is not None:
            state.scores = torch.cat([state.scores, state.scores.new_zeros(
                (*state.scores.shape[:2], new))], dim=-1)
        if state.clusters is not None:
            for i in range(new):
                state.clusters.append(key[..., key.shape[-2] - new + i:, :][..., :1, :])
        self._record(module.layer_idx, "extend", state, key.shape[-2], positions=state.positions)
        return out, None

    def _record(self, layer: int, phase: str, state: LayerState, attended: int,
                positions: torch.Tensor, clusters: torch.Tensor | None = None,
                cache_rows: int | None = None) -> None:
        if not self.session.record:
            return
        self.session.records.append({
            "step": state.step, "layer": layer, "phase": phase,
            "selector": self.session.schedule[layer],
            "cache": state.positions.shape[-1] if cache_rows is None else cache_rows,
            "attended": attended, "positions": positions.clone(), "clusters": clusters,
        })


def _replace_layer(cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor,
                   evicted: int) -> None:
    """Swap the cache layer for an EvictedLayer holding the compacted rows."""
    layers = getattr(cache, "layers", None)
    if layers is None or not isinstance(layers[layer], DynamicLayer):
        raise NotImplementedError("apply() needs a DynamicCache (DynamicLayer per layer)")
    layers[layer] = EvictedLayer(keys.contiguous(), values.contiguous(), evicted)


__all__ = ["EvictedLayer", "Method", "Session", "apply", "generate_fed", "onehot_to_indices"]
