"""CrypTen-aware Llama-family modules (Llama, Qwen2): encrypted weights, secure attention.

Why: parameters cannot hold CrypTensors, so each transformers module that owns weights is
replaced by one that holds them as fixed operands (``secure.primitives.premask``): W^T of every
linear (and its bias: Qwen2's q/k/v), the embedding table (and its transpose for a tied LM
head), the RMSNorm gammas.
The transformers decoder layers stay as they are and call these modules.

- SecureEmbedding: one-hot @ table (the token stays secret: no index is ever opened).
- SecureLlamaAttention: RoPE on shares (cos/sin are public: positions are public), GQA by
  grouping the query heads of one KV head (the cache is never repeated), causal attention
  with a public 0/1 mask inside the softmax (no additive -inf), and a ``CachePolicy`` that
  chooses the (K, V) attended at decode and sees the prefill's last-window probabilities;
  at decode the values product comes before the softmax's normalization.
- ``secure_forward`` runs embedding -> decoder layers -> norm -> LM head on the last
  position (transformers' own model forward builds masks from plain tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import crypten
import crypten.communicator as comm
import torch
from torch import nn

from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.secure.cache.kv_cache import CachePolicy, FullCache, SecureKVCache
from crypten_mpcache.secure.functions.activation import ActivationConfig, silu_times
from crypten_mpcache.secure.functions.norm import NormConfig, rms_norm
from crypten_mpcache.secure.functions.softmax import (
    SoftmaxConfig,
    masked_softmax,
    masked_softmax_parts,
)
from crypten_mpcache.secure.functions.tournament import argmax_onehot
from crypten_mpcache.secure.primitives.openings import charged, run_together
from crypten_mpcache.secure.primitives.premask import fixed_operand, fixed_operands


@dataclass(frozen=True)
class SecureModelOptions:
    """How weights are encrypted and how attention uses the cache."""

    src: int = 0  # the party that holds the real weights (the model owner)
    premask: bool = True  # mask each fixed operand once (see secure.primitives.premask)
    policy: CachePolicy = field(default_factory=FullCache)
    norm: NormConfig = field(default_factory=NormConfig)
    softmax: SoftmaxConfig = field(default_factory=SoftmaxConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    # |logit| < 2**logit_bound_log2: the argmax's DCF keys compare that many bits (SmolLM2's
    # logits stay below 64 in magnitude; 2**13 leaves a wide margin)
    logit_bound_log2: int = 13

    def __post_init__(self) -> None:
        if self.src < 0:
            raise ValueError(f"src must be a party rank >= 0, got {self.src}")
        if not 1 <= self.logit_bound_log2 <= 46:
            raise ValueError("logit_bound_log2 must be in [1, 46]")


# --- encrypted weights -----------------------------------------------------------------


def owner_values(weight: torch.Tensor, options: SecureModelOptions) -> torch.Tensor:
    """What this party passes to ``crypten.cryptensor(..., src)``: the owner its weight;
    every other party holds the model on the meta device (no values, only shapes:
    ``generation_party.load_party_model``) and passes zeros of the public shape, which
    CrypTen ignores at a non-source party."""
    if weight.is_meta:
        if comm.get().get_rank() == options.src:
            raise ValueError("the model owner's weights are on the meta device: load them "
                             "with from_pretrained")
        return torch.zeros(weight.shape)
    return weight.detach().float()


def encrypt_operand(weight: torch.Tensor, name: str, options: SecureModelOptions) -> Any:
    """Encrypt a weight from party ``src`` (other parties' values are ignored)."""
    encrypted = crypten.cryptensor(owner_values(weight, options), src=options.src)
    return fixed_operand(encrypted, name=name, premask=options.premask)


def encrypt_operands(weights: list[torch.Tensor], names: list[str],
                     options: SecureModelOptions) -> list[Any]:
    """Several weights from party ``src``, premasked together (one dealer request and one
    opening round, e.g. a projection's W^T and its bias)."""
    encrypted = [crypten.cryptensor(owner_values(w, options), src=options.src) for w in weights]
    return fixed_operands(encrypted, names=names, premask=options.premask)


class SecureLinear(nn.Module):
    """y = x @ W^T (+ b): W^T and the optional bias b (Qwen2's q/k/v) are fixed operands,
    encrypted by the owner and premasked together; adding b is local (no traffic).

    With ``splits`` the module is several projections of the same input fused along the
    output dim (q/k/v, gate/up, as LLM servers fuse them): one product, so one dealer
    triple and ONE opening of the masked input instead of one per projection; ``forward``
    returns the parts. Only the owner's concatenation of public-shaped weights is new.
    """

    def __init__(self, weight_t: Any, bias: Any = None, kind: str = "linear",
                 splits: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.weight_t = weight_t
        self.bias = bias
        self.kind = kind
        self.in_features, self.out_features = (int(s) for s in weight_t.shape)
        if splits is not None and (sum(splits) != self.out_features or min(splits) < 1):
            raise ValueError(f"splits {splits} do not partition {self.out_features} outputs")
        self.splits = splits

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str,
                    options: SecureModelOptions) -> SecureLinear:
        return cls.fused([linear], name, options)

    @classmethod
    def fused(cls, linears: list[nn.Linear], name: str, options: SecureModelOptions,
              input_gain: torch.Tensor | None = None) -> SecureLinear:
        """One encrypted module for ``linears`` (same input; all with a bias or none);
        more than one returns a tuple of their outputs from ``forward``.

        ``input_gain``: the gamma of the RMSNorm whose output is the input, folded into
        the weights by the owner ((y * g) @ W^T = y @ (g[:, None] * W^T)), so the norm
        needs no encrypted product of its own (one round less per norm)."""
        biased = {linear.bias is not None for linear in linears}
        if len(biased) != 1 or any(linear.in_features != linears[0].in_features
                                   for linear in linears):
            raise ValueError("fused projections need one input width and biases on all or "
                             "none of them")
        weight_t = torch.cat([linear.weight.detach().t() for linear in linears], dim=1)
        if input_gain is not None:
            weight_t = input_gain.detach().reshape(-1, 1).to(weight_t.dtype) * weight_t
        splits = tuple(linear.out_features for linear in linears) if len(linears) > 1 else None
        if not biased.pop():
            return cls(encrypt_operand(weight_t, name, options), splits=splits)
        bias = torch.cat([linear.bias.detach() for linear in linears])
        return cls(*encrypt_operands([weight_t, bias], [name, f"{name}.bias"], options),
                   splits=splits)

    def forward(self, x: Any) -> Any:
        with operator_scope(self.kind):
            y = self.weight_t.rmatmul(x)
            y = y if self.bias is None else y + self.bias.value()
        if self.splits is None:
            return y
        return tuple(y.split(list(self.splits), dim=-1))

    def extra_repr(self) -> str:
        bias = ", bias" if self.bias is not None else ""
        fused = f", fused={list(self.splits)}" if self.splits else ""
        return f"in={self.in_features}, out={self.out_features}{bias}{fused}, encrypted"


class SecureEmbedding(nn.Module):
    """Rows of an encrypted table selected by an encrypted one-hot (B, T, vocab)."""

    def __init__(self, table: Any) -> None:
        super().__init__()
        self.table = table
        self.num_embeddings, self.embedding_dim = (int(s) for s in table.shape)

    def forward(self, onehot: Any) -> Any:
        with operator_scope("embedding"):
            return self.table.rmatmul(onehot)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, encrypted"


class SecureRMSNorm(nn.Module):
    """RMSNorm with an encrypted gamma, or with none when the gamma is folded into the
    next linear (``SecureLinear.fused``); ``functions.norm.rms_norm`` keeps inv_sqrt in
    range."""

    def __init__(self, weight: Any, eps: float, config: NormConfig) -> None:
        super().__init__()
        self.weight = weight
        self.variance_epsilon = float(eps)
        self.config = config

    def forward(self, x: Any) -> Any:
        with operator_scope("norm"):
            return rms_norm(x, self.weight, self.variance_epsilon,
                                      config=self.config)


class SecureMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up fused (one opening of x)."""

    def __init__(self, gate_up: SecureLinear, down: SecureLinear,
                 config: ActivationConfig) -> None:
        super().__init__()
        if gate_up.splits is None or len(gate_up.splits) != 2:
            raise ValueError("SecureMLP needs gate and up fused into one SecureLinear")
        self.gate_up_proj, self.down_proj = gate_up, down
        self.config = config

    def forward(self, x: Any) -> Any:
        gate, up = self.gate_up_proj(x)
        with operator_scope("activation"):
            hidden = silu_times(gate, up, config=self.config)
        return self.down_proj(hidden)


# --- attention -------------------------------------------------------------------------


def rotate_half(x: Any) -> Any:
    half = x.shape[-1] // 2
    return crypten.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: Any, cos: torch.Tensor, sin: torch.Tensor) -> Any:
    """RoPE on shares: cos and sin are public (B, T, d), so only public products."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def causal_mask01(queries: int, keys: int) -> torch.Tensor:
    """Public 0/1 mask: query i (the last ``queries`` of ``keys`` positions) sees keys <= i."""
    past = keys - queries
    rows = torch.arange(queries).unsqueeze(1) + past
    return (torch.arange(keys).unsqueeze(0) <= rows).float()


class SecureLlamaAttention(nn.Module):
    """Llama attention over the encrypted KV cache, with a pluggable cache policy."""

    def __init__(self, config: Any, layer_idx: int, projections: dict[str, SecureLinear],
                 options: SecureModelOptions) -> None:
        """``projections``: "qkv_proj" (q, k, v fused: one opening of the input) and
        "o_proj"."""
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None)
                            or config.hidden_size // config.num_attention_heads)
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.scaling = self.head_dim ** -0.5
        self.options = options
        self.qkv_proj, self.o_proj = projections["qkv_proj"], projections["o_proj"]
        kv_width = self.num_kv_heads * self.head_dim
        if self.qkv_proj.splits != (self.num_heads * self.head_dim, kv_width, kv_width):
            raise ValueError(f"qkv_proj splits {self.qkv_proj.splits} do not match the "
                             "config's heads")

    def _heads(self, x: Any, heads: int) -> Any:
        batch, length = x.shape[0], x.shape[1]
        return x.reshape(batch, length, heads, self.head_dim).transpose(1, 2)

    def _grouped(self, x: Any) -> Any:
        """(B, Hq, T, n) -> (B, Hkv, groups*T, n): the query heads sharing one KV head."""
        b, _, t, n = x.shape
        return x.reshape(b, self.num_kv_heads, self.num_key_value_groups * t, n)

    def _ungrouped(self, x: Any, queries: int) -> Any:
        b, _, _, n = x.shape
        return x.reshape(b, self.num_heads, queries, n)

    def forward(self, hidden_states: Any, position_embeddings: tuple[torch.Tensor, ...],
                attention_mask: Any = None, cache: SecureKVCache | None = None,
                **kwargs: Any) -> tuple[Any, None]:
        if cache is None:
            raise ValueError("secure attention needs a SecureKVCache")
        batch, queries = hidden_states.shape[0], hidden_states.shape[1]
        q, k, v = self.qkv_proj(hidden_states)
        q = self._heads(q, self.num_heads)
        k, v = self._heads(k, self.num_kv_heads), self._heads(v, self.num_kv_heads)
        cos, sin = position_embeddings
        with operator_scope("attention_scores"):  # public products only (RoPE, scaling)
            q = apply_rope(q, cos, sin) * self.scaling
            k = apply_rope(k, cos, sin)
        layer = cache.layer(self.layer_idx)
        prefill = layer.get_seq_length() == 0
        keys, values = cache.update(k, v, self.layer_idx)
        if not prefill:
            keys, values = self.options.policy.select(layer, q)
        mask01 = causal_mask01(queries, int(keys.shape[-2]))
        if prefill:
            probs = self._probabilities(q, keys, mask01)
            with operator_scope("attention_values"):
                out = self._ungrouped(values.rmatmul(self._grouped(probs)), queries)
        else:
            out = self._normalized_after_values(q, keys, values, mask01)
        out = out.transpose(1, 2)
        out = self.o_proj(out.reshape(batch, queries, self.num_heads * self.head_dim))
        window = self.options.policy.prefill_window(queries) if prefill else 0
        if prefill:
            self.options.policy.after_prefill(layer, probs[:, :, -window:, :] if window else None)
        return out, None

    def _scores(self, q: Any, keys: Any) -> Any:
        with operator_scope("attention_scores"):
            scores = keys.transpose(-1, -2).rmatmul(self._grouped(q))
        return self._ungrouped(scores, q.shape[2])

    def _probabilities(self, q: Any, keys: Any, mask01: torch.Tensor) -> Any:
        """Prefill: the probabilities themselves (the static stage reads a window)."""
        with operator_scope("softmax"):
            return masked_softmax(self._scores(q, keys), mask01, dim=-1,
                                  config=self.options.softmax)

    def _normalized_after_values(self, q: Any, keys: Any, values: Any,
                                 mask01: torch.Tensor) -> Any:
        """Decode: (exps V) / sum(exps), so the values product (and a selection's scatter)
        opens beside the reciprocal's first rounds instead of after its last; then one
        product by the reciprocal, (B, Hq, 1, D) by (B, Hq, 1, 1)."""
        parts = masked_softmax_parts(self._scores(q, keys), mask01,
                                     config=self.options.softmax)
        with operator_scope("attention_values"):
            weighted, inverse = run_together(
                values.rmatmul_pending(self._grouped(parts.exps)),
                charged(parts.reciprocal, "softmax"))
            return self._ungrouped(weighted, q.shape[2]) * inverse


# --- the forward pass ------------------------------------------------------------------


def secure_argmax(logits: Any, options: SecureModelOptions | None = None) -> Any:
    """The next token as an encrypted fixed-point one-hot (B, 1, vocab); it stays secret."""
    bound = options.logit_bound_log2 if options else SecureModelOptions.logit_bound_log2
    with operator_scope("argmax"):
        return argmax_onehot(logits, dim=-1, bound_log2=bound)


def secure_forward(model: nn.Module, onehot: Any, cache: SecureKVCache,
                   start_position: int) -> Any:
    """Encrypted logits (B, 1, vocab) of the last position of an encrypted one-hot input.

    ``model`` is a patched LlamaForCausalLM or Qwen2ForCausalLM; ``start_position``
    (public) is the position of the first input token, so the decode positions continue
    after the prompt even when a policy has evicted cache entries.
    """
    inner = model.model
    length = int(onehot.shape[1])
    positions = torch.arange(start_position, start_position + length).unsqueeze(0)
    cos, sin = inner.rotary_emb(torch.empty(0), positions)
    hidden = inner.embed_tokens(onehot)
    for layer in inner.layers[: model.config.num_hidden_layers]:
        hidden = layer(hidden, attention_mask=None, position_ids=positions, cache=cache,
                       use_cache=True, position_embeddings=(cos, sin))
    hidden = inner.norm(hidden[:, -1:, :])
    return model.lm_head(hidden)
