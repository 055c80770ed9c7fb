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
and its one engine (``algorithm.engine``) runs here on ``TorchBackend``: this module
only moves the engine's choices into the ``DynamicCache`` and attends.

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

from crypten_mpcache.algorithm import dynamic
from crypten_mpcache.algorithm.choices import SelectionRecord, StaticChoice, compact_rows
from crypten_mpcache.algorithm.engine import Engine
from crypten_mpcache.algorithm.plan import MethodPlan
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
class Session:
    """What ``apply`` yields: the plan, the engine that runs it and its records.

    ``records`` holds one ``algorithm.engine.SelectionRecord`` per (phase, step, layer)
    (the same schema as the secure policy's debug records).
    """

    engine: Engine
    caches: dict[int, Any] = field(default_factory=dict)

    @property
    def plan(self) -> MethodPlan:
        return self.engine.plan

    @property
    def schedule(self) -> tuple[int, ...]:
        return self.engine.schedule

    @property
    def records(self) -> list[SelectionRecord]:
        return self.engine.records

    def decode_records(self, layer: int | None = None) -> list[SelectionRecord]:
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
    session = Session(Engine(plan, BACKEND, config.num_hidden_layers, record=record))
    original = config._attn_implementation or "eager"
    name = f"crypten_mpcache_{next(_NAMES)}"
    original_fn = ALL_ATTENTION_FUNCTIONS.get_interface(original, eager_attention_forward)
    host = _TorchHost(session, original_fn)
    hooks = []
    AttentionInterface.register(name, host.attention)
    if original in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    try:
        for module in _attention_modules(model):
            hooks.append(module.register_forward_pre_hook(host.capture_cache, with_kwargs=True))
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


class _TorchHost:
    """The registered attention function: moves the engine's choices into the
    ``DynamicCache`` and attends; every decision is the engine's."""

    def __init__(self, session: Session, original_fn: Any) -> None:
        self.session = session
        self.engine = session.engine
        self.original_fn = original_fn

    def capture_cache(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.session.caches[module.layer_idx] = cache

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        layer = module.layer_idx
        cache = self.session.caches.get(layer)
        q_len, kv_len = query.shape[2], key.shape[2]
        if cache is None or q_len == kv_len or layer not in self.engine.layers:
            out = self.original_fn(module, query, key, value, attention_mask,
                                   scaling=scaling, dropout=dropout, **kwargs)
            if cache is not None and q_len == kv_len:
                self._prefill(layer, query, key, value, cache, scaling)
            return out
        if q_len == 1:
            return self._decode(module, query, key, value, attention_mask, scaling, dropout,
                                cache, **kwargs)
        out, _ = _attend(query, key, value, scaling, causal_offset=key.shape[-2] - q_len)
        self.engine.extend(layer, key, q_len)
        return out, None

    def _prefill(self, layer: int, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, cache: Any, scaling: float) -> None:
        length = key.shape[-2]

        def probs(rows: int) -> torch.Tensor:
            _, p = _attend(query[..., -rows:, :], key, key, scaling,
                           causal_offset=length - rows)
            return p.float()

        def compact(choice: StaticChoice) -> torch.Tensor:
            keys = _compact(choice, key)
            _replace_layer(cache, layer, keys, _compact(choice, value),
                           length - choice.counts.keep)
            return keys

        self.engine.prefill(layer, key, probs, compact)

    def _decode(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: Any, scaling: float, dropout: float,
                cache: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        layer = module.layer_idx
        choice = self.engine.decode(layer, query, lambda: key[..., -1:, :])
        state = self.engine.layers[layer]
        if choice.mode == "window":
            keep = lambda x: torch.cat([x[..., : choice.frozen, :],  # noqa: E731
                                        x[..., x.shape[-2] - choice.tail:, :]], dim=-2)
            key, value = keep(key), keep(value)
            _replace_layer(cache, layer, key, value, state.seen - state.rows)
        elif choice.mode == "heavy":
            key, value = _compact(choice.evict, key), _compact(choice.evict, value)
            _replace_layer(cache, layer, key, value, state.seen - state.rows)
        elif choice.selects:
            key = dynamic.gather_tokens(BACKEND, key, choice.onehots, choice.counts)
            value = dynamic.gather_tokens(BACKEND, value, choice.onehots, choice.counts)
        if key.shape[-2] == state.seen and state.scores is None:
            return self.original_fn(module, query, key, value, attention_mask,
                                    scaling=scaling, dropout=dropout, **kwargs)
        out, probs = _attend(query, key, value, scaling)
        self.engine.observe(layer, probs.float())
        return out, None


def _compact(choice: StaticChoice, x: torch.Tensor) -> torch.Tensor:
    """Sinks, the chosen middle rows and the window of ``x``, in original order."""
    onehot = None if choice.onehot is None else choice.onehot.to(x.dtype)
    return compact_rows(BACKEND, onehot, x, choice.counts)


def _replace_layer(cache: Any, layer: int, keys: torch.Tensor, values: torch.Tensor,
                   evicted: int) -> None:
    """Swap the cache layer for an EvictedLayer holding the compacted rows."""
    layers = getattr(cache, "layers", None)
    if layers is None or not isinstance(layers[layer], DynamicLayer):
        raise NotImplementedError("apply() needs a DynamicCache (DynamicLayer per layer)")
    layers[layer] = EvictedLayer(keys.contiguous(), values.contiguous(), evicted)


__all__ = ["EvictedLayer", "Method", "Session", "apply", "generate_fed"]
