"""The encrypted KV cache and the pluggable policy that decides what attention reads.

Why this shape: transformers' attention calls ``cache.update(k, v, layer_idx)``; a
``SecureKVCache`` (a transformers ``Cache`` of ``SecureKVLayer``) keeps each layer's K and
V as fixed operands (see ``secure.primitives.premask``): a row written once is masked and
opened once, and every later product with it opens only the fresh operand. Each step's rows are one
operand; the layer holds their concatenation.

What attention attends to is a ``CachePolicy``'s decision, so eviction plugs in without
touching the attention code:
- ``prefill_window(prompt_len)``: how many of the last prefill queries' attention rows the
  policy wants (0: none). The attention hands it those probabilities, which the prefill
  computes anyway (MPCache's static eviction reuses them instead of recomputing).
- ``after_prefill(layer, window_probs)``: may compact the layer (``layer.replace``).
- ``select(layer, query)``: at each decode step, the (K, V) operands to attend to.
Shapes must depend on public values only; a policy keeps its per-layer state in
``layer.state``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.cache_utils import Cache, CacheLayerMixin

from crypten_mpcache.secure.primitives.premask import fixed_operands


class SecureKVLayer(CacheLayerMixin):
    """One layer's encrypted K and V, (batch, kv_heads, tokens, head_dim) fixed operands."""

    is_compileable = False
    is_sliding = False

    def __init__(self, layer_idx: int = 0, premask: bool = True) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.premask = premask
        self.writes = 0  # how many update() calls wrote rows (public)
        self.new_keys: Any = None  # the last update's key rows, as the attention gave them
        self.state: dict[str, Any] = {}  # the cache policy's per-layer state
        self.is_initialized = True

    def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
        """Nothing to allocate: the first update sets the operands."""

    def update(self, key_states: Any, value_states: Any, *args: Any,
               **kwargs: Any) -> tuple[Any, Any]:
        """Append this step's encrypted rows (K and V premasked together: one dealer
        request, one opening, in the round of the first product with the keys: the
        attention's q K^T, ``deferred_opening``); return the whole (K, V) operands.
        ``new_keys`` keeps the rows' own shares for whoever needs them before that."""
        names = [f"kv/layer{self.layer_idx}/{which}/{self.writes}" for which in ("k", "v")]
        new_k, new_v = fixed_operands([key_states, value_states], names=names,
                                      premask=self.premask, deferred=True)
        self.new_keys = key_states
        self.writes += 1
        if self.keys is None:
            self.keys, self.values = new_k, new_v
        else:
            self.keys = type(new_k).cat([self.keys, new_k], dim=-2)
            self.values = type(new_v).cat([self.values, new_v], dim=-2)
        return self.keys, self.values

    def replace(self, keys: Any, values: Any) -> None:
        """Swap in a compacted (K, V), e.g. after static eviction; shapes stay public."""
        if keys.shape[:-1] != values.shape[:-1]:
            raise ValueError(f"K {tuple(keys.shape)} and V {tuple(values.shape)} disagree")
        self.keys, self.values = keys, values

    def get_seq_length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:  # CrypTensors stay where they are
        pass

    def prefetch(self) -> None:
        pass

    def reset(self) -> None:
        self.keys = self.values = None
        self.writes = 0
        self.state = {}


class SecureKVCache(Cache):
    """A transformers ``Cache`` whose layers hold encrypted K/V fixed operands."""

    def __init__(self, num_layers: int, *, premask: bool = True) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        super().__init__(layers=[SecureKVLayer(i, premask) for i in range(num_layers)])

    def layer(self, layer_idx: int) -> SecureKVLayer:
        return self.layers[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length()


class CachePolicy:
    """Full attention: keep everything, attend to everything (the baseline policy)."""

    name = "full"

    def prefill_window(self, prompt_len: int) -> int:
        """How many last prefill query rows of attention probabilities to hand over."""
        return 0

    def after_prefill(self, layer: SecureKVLayer, window_probs: Any | None) -> None:
        """Called once per layer at the end of prefill, with (B, heads, window, N) probs."""

    def select(self, layer: SecureKVLayer, query: Any) -> tuple[Any, Any]:
        """The (K, V) operands that the decode query (B, heads, 1, d) attends to."""
        return layer.keys, layer.values


@dataclass(frozen=True)
class FullCache(CachePolicy):
    """Keep and attend to the whole encrypted cache."""

    name: str = "full"
