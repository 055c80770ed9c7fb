"""Inside one party: random encrypted layers and KV cache, static eviction, decode steps.

Why build the cache directly: the decode-step cost depends on the cache's public length,
not on how it was filled, so a secure prefill of thousands of tokens is not needed. Every
value here is random; party 0 encrypts the weights (it plays the model owner) and the
cache rows (their values are never looked at). Phases of the returned cost report:
``setup`` (weights and KV premasking), ``static/<layer>`` (the policy's one-time static
eviction), ``decode/<step>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crypten
import crypten.communicator as comm
import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from crypten_mpcache.bench.shapes import ModelShape, get_shape
from crypten_mpcache.bench.variants import resolve
from crypten_mpcache.models.llama import (
    SecureLinear,
    SecureLlamaAttention,
    SecureMLP,
    SecureModelOptions,
    SecureRMSNorm,
    encrypt_operand,
    encrypt_operands,
)
from crypten_mpcache.runtime.cost import CostMeter
from crypten_mpcache.runtime.offline import deal_ahead
from crypten_mpcache.secure.cache.kv_cache import CachePolicy, SecureKVCache
from crypten_mpcache.secure.functions.activation import ActivationConfig

OWNER = 0


@dataclass(frozen=True)
class RowTask:
    """What every party needs to measure one (context, cache) row; all public."""

    shape: str
    layers: int
    context: int
    cache: str
    budget: float
    steps: int
    share_weights: bool = True
    seed: int = 0
    activation: str = "lookup"

    def model_shape(self) -> ModelShape:
        return get_shape(self.shape)


class CountingPolicy(CachePolicy):
    """Delegates to a policy and records how many tokens each decode ``select`` returns
    (a public shape), so the bench can check the budget really holds."""

    def __init__(self, inner: CachePolicy) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)
        self.attended: list[int] = []

    def prefill_window(self, prompt_len: int) -> int:
        return self.inner.prefill_window(prompt_len)

    def after_prefill(self, layer: Any, window_probs: Any | None) -> None:
        self.inner.after_prefill(layer, window_probs)

    def select(self, layer: Any, query: Any) -> tuple[Any, Any]:
        keys, values = self.inner.select(layer, query)
        self.attended.append(int(keys.shape[-2]))
        return keys, values

    def __getattr__(self, name: str) -> Any:  # anything else the attention may ask
        return getattr(self.inner, name)


def _owner_tensor(shape: tuple[int, ...], fill: str, generator: torch.Generator,
                  rank: int) -> torch.Tensor:
    """Party 0's random values; the others pass zeros of the same (public) shape."""
    if rank != OWNER:
        return torch.zeros(shape)
    if fill == "ones":
        return torch.ones(shape) + 0.01 * torch.randn(shape, generator=generator)
    return 0.02 * torch.randn(shape, generator=generator)


def _linear(shape_in: int, parts: tuple[int, ...], name: str, ctx: _BuildContext,
            bias: bool = False) -> Any:
    """Random projections of one input fused along the output (as the patch fuses them)."""
    shape_out = sum(parts)
    splits = parts if len(parts) > 1 else None
    weight_t = _owner_tensor((shape_in, shape_out), "randn", ctx.generator, ctx.rank)
    if not bias:
        return SecureLinear(encrypt_operand(weight_t, name, ctx.options), splits=splits)
    b = _owner_tensor((shape_out,), "randn", ctx.generator, ctx.rank)
    return SecureLinear(*encrypt_operands([weight_t, b], [name, f"{name}.bias"], ctx.options),
                        splits=splits)


def _norm(ctx: _BuildContext) -> Any:
    """A decoder layer's norm: its gamma is folded into the next linear, as in the patch."""
    return SecureRMSNorm(None, ctx.shape.rms_eps, ctx.options.norm)


@dataclass
class _BuildContext:
    shape: ModelShape
    config: Any
    options: Any
    generator: torch.Generator
    rank: int


def _weights(prefix: str, ctx: _BuildContext) -> dict[str, Any]:
    """One layer's encrypted, premasked modules (projections, MLP, norms)."""
    s = ctx.shape
    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    qkv = (q_out, kv_out, kv_out)
    projections = {"qkv_proj": _linear(s.hidden, qkv, f"{prefix}/qkv_proj", ctx, s.qkv_bias),
                   "o_proj": _linear(q_out, (s.hidden,), f"{prefix}/o_proj", ctx)}
    mlp = SecureMLP(_linear(s.hidden, (s.mlp, s.mlp), f"{prefix}/gate_up_proj", ctx),
                    _linear(s.mlp, (s.hidden,), f"{prefix}/down_proj", ctx),
                    ctx.options.activation)
    return {"projections": projections, "mlp": mlp,
            "input_layernorm": _norm(ctx), "post_attention_layernorm": _norm(ctx)}


def build_layers(task: RowTask, options: Any, rank: int) -> list[torch.nn.Module]:
    """transformers decoder layers (built on the meta device: no plaintext weights are
    allocated) whose modules are replaced by encrypted ones. With ``share_weights`` all
    layers use ONE set of encrypted weights: a premasked product opens only the fresh
    activation, so the per-step transcript is the same as with distinct weights, and the
    memory is one layer's."""
    shape = task.model_shape()
    config = shape.llama_config(task.layers)
    ctx = _BuildContext(shape, config, options, torch.Generator().manual_seed(task.seed), rank)
    shared = _weights("shared", ctx) if task.share_weights else None
    layers = []
    for index in range(task.layers):
        weights = shared or _weights(f"layer{index}", ctx)
        with torch.device("meta"):
            layer = LlamaDecoderLayer(config, index)
        layer.self_attn = SecureLlamaAttention(config, index, weights["projections"], options)
        layer.mlp = weights["mlp"]
        layer.input_layernorm = weights["input_layernorm"]
        layer.post_attention_layernorm = weights["post_attention_layernorm"]
        layers.append(layer)
    return layers


def fill_cache(task: RowTask, rank: int) -> Any:
    """A SecureKVCache whose every layer holds ``context`` random encrypted K/V rows,
    written as one operand like a prefill writes them."""
    shape = task.model_shape()
    generator = torch.Generator().manual_seed(task.seed + 1)
    cache = SecureKVCache(task.layers, premask=True)
    rows = (1, shape.kv_heads, task.context, shape.head_dim)
    for index in range(task.layers):
        k = crypten.cryptensor(_owner_tensor(rows, "randn", generator, rank) * 50, src=OWNER)
        v = crypten.cryptensor(_owner_tensor(rows, "randn", generator, rank) * 50, src=OWNER)
        cache.update(k, v, index)
        cache.layer(index).keys.open_now()  # a prefill's q K^T opens the rows' D; here, now
    return cache


def window_probs(task: RowTask, window: int, generator: torch.Generator, rank: int) -> Any:
    """Random attention rows (1, heads, window, context) for the static stage: positive,
    summing to one along the keys, causal like a prefill's last rows."""
    shape = task.model_shape()
    probs = torch.zeros(1, shape.heads, window, task.context)
    if rank == OWNER:
        scores = torch.randn(probs.shape, generator=generator)
        first = task.context - window
        causal = torch.arange(task.context)[None, :] <= (torch.arange(window)[:, None] + first)
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    return crypten.cryptensor(probs, src=OWNER)


def _rope(task: RowTask, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    config = task.model_shape().llama_config(task.layers)
    positions = torch.tensor([[position]])
    return LlamaRotaryEmbedding(config)(torch.empty(0), positions)


def run_row(task: RowTask) -> dict[str, Any]:
    """One party's measurement of one row (module level: ``launch`` forks it)."""
    rank = comm.get().get_rank()
    policy = CountingPolicy(resolve(task.cache).create(task.budget, task.layers))
    options = SecureModelOptions(src=OWNER, premask=True, policy=policy,
                                 activation=ActivationConfig(method=task.activation))
    meter = CostMeter()

    def phase(name: str, run: Callable[[], Any]) -> Any:
        with meter.phase(name):
            return deal_ahead(name, run)

    layers, cache = phase("setup", lambda: (build_layers(task, options, rank),
                                            fill_cache(task, rank)))
    generator = torch.Generator().manual_seed(task.seed + 2)
    window = policy.prefill_window(task.context)
    for index in range(task.layers):
        probs = window_probs(task, window, generator, rank) if window else None
        phase(f"static/{index}",
              lambda i=index, p=probs: policy.after_prefill(cache.layer(i), p))
        del probs
    hidden_size = task.model_shape().hidden
    topk_log = getattr(getattr(policy.inner, "backend", None), "topk_log", [])
    for step in range(task.steps):
        topk_log.clear()  # the last step's top-k calls are reported
        hidden = crypten.cryptensor(
            _owner_tensor((1, 1, hidden_size), "randn", generator, rank) * 50, src=OWNER)
        position = task.context + step
        cos_sin = _rope(task, position)

        def decode(hidden: Any = hidden, position: int = position, cos_sin: Any = cos_sin) -> None:
            for layer in layers:
                hidden = layer(hidden, attention_mask=None,
                               position_ids=torch.tensor([[position]]), cache=cache,
                               use_cache=True, position_embeddings=cos_sin)

        phase(f"decode/{step}", decode)
    return {"rank": rank, "cost": meter.report(), "attended": policy.attended,
            "topk": [choice.label() for choice in topk_log],
            "window": window, "cache_lengths": [cache.get_seq_length(i)
                                                for i in range(task.layers)]}
