"""Explicit, reversible patch of a transformers Llama-family model instance for CrypTen.

The family: LlamaForCausalLM and Qwen2ForCausalLM (same decoder; Qwen2's q/k/v biases are
encrypted and premasked with their weights by ``SecureLinear.fused``).

Why a patch of one instance (not of the class): nothing else in the process changes, and
``restore()`` puts back the very module objects that were replaced. What is replaced:
``embed_tokens``, every layer's ``self_attn`` (q/k/v fused into one product, and o),
``mlp`` (gate/up fused), both RMSNorms (their gammas folded into q/k/v and gate/up),
the final norm and ``lm_head`` (tied to the embedding table when the config says so).
Run the patched model with ``crypten_mpcache.models.llama.secure_forward``.

Must run inside every party (after ``crypten.init``) in the same order: each weight is
encrypted from party ``options.src``; the other parties' weights are ignored (they build
the model from its config and never hold the real weights).

    with patched(model, SecureModelOptions(premask=True)) as handle:
        logits = secure_forward(model, onehot, cache, 0)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from crypten_mpcache.models import check_architecture
from crypten_mpcache.models.llama import (
    SecureEmbedding,
    SecureLinear,
    SecureLlamaAttention,
    SecureMLP,
    SecureModelOptions,
    SecureRMSNorm,
    encrypt_operand,
)


@dataclass
class PatchHandle:
    """What was replaced, so that ``restore`` can put it back."""

    model: nn.Module
    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    active: bool = True

    def swap(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        self.replaced.append((parent, name, getattr(parent, name)))
        setattr(parent, name, new)

    def restore(self) -> None:
        """Put every original module back (idempotent)."""
        for parent, name, original in reversed(self.replaced):
            setattr(parent, name, original)
        self.replaced.clear()
        self.active = False


def _architecture(model: nn.Module) -> str:
    name = check_architecture(type(model).__name__)
    layer_types = getattr(model.config, "layer_types", None) or ()
    if getattr(model.config, "use_sliding_window", False) or "sliding_attention" in layer_types:
        raise ValueError(f"{name} with sliding-window attention is not supported for private "
                         "inference (set use_sliding_window=False)")
    return name


def _eps(norm: nn.Module) -> float:
    return getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))


def _norm(norm: nn.Module, name: str, options: SecureModelOptions) -> SecureRMSNorm:
    """A norm that multiplies by its own encrypted gamma (one product)."""
    return SecureRMSNorm(encrypt_operand(norm.weight, name, options), _eps(norm), options.norm)


def _folded_norm(norm: nn.Module, options: SecureModelOptions) -> SecureRMSNorm:
    """A norm whose gamma the next linear carries (``SecureLinear.fused(input_gain=)``)."""
    return SecureRMSNorm(None, _eps(norm), options.norm)


def _attention(layer: nn.Module, config: object, index: int,
               options: SecureModelOptions) -> SecureLlamaAttention:
    attn = layer.self_attn
    qkv = SecureLinear.fused([attn.q_proj, attn.k_proj, attn.v_proj], f"layer{index}/qkv_proj",
                             options, input_gain=layer.input_layernorm.weight)
    o_proj = SecureLinear.from_linear(attn.o_proj, f"layer{index}/o_proj", options)
    return SecureLlamaAttention(config, index, {"qkv_proj": qkv, "o_proj": o_proj}, options)


def _mlp(layer: nn.Module, index: int, options: SecureModelOptions) -> SecureMLP:
    mlp = layer.mlp
    act = getattr(mlp.config, "hidden_act", "silu") if hasattr(mlp, "config") else "silu"
    if act != "silu":
        raise ValueError(f"only SiLU MLPs are supported, got hidden_act={act!r}")
    gate_up = SecureLinear.fused([mlp.gate_proj, mlp.up_proj], f"layer{index}/gate_up_proj",
                                 options, input_gain=layer.post_attention_layernorm.weight)
    down = SecureLinear.from_linear(mlp.down_proj, f"layer{index}/down_proj", options)
    return SecureMLP(gate_up, down, options.activation)


def patch(model: nn.Module, options: SecureModelOptions | None = None) -> PatchHandle:
    """Replace the weight-holding modules of ``model`` by encrypted ones (in place).

    The decoder layers' norm gammas are folded into the q/k/v and gate/up weights; the
    final norm's into an untied LM head (a tied head shares the embedding table, so that
    norm keeps its own encrypted gamma)."""
    _architecture(model)
    options = options or SecureModelOptions()
    config = model.config
    inner = model.model
    handle = PatchHandle(model)
    table = encrypt_operand(inner.embed_tokens.weight, "embed_tokens", options)
    handle.swap(inner, "embed_tokens", SecureEmbedding(table))
    for index, layer in enumerate(inner.layers[: config.num_hidden_layers]):
        handle.swap(layer, "self_attn", _attention(layer, config, index, options))
        handle.swap(layer, "mlp", _mlp(layer, index, options))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            handle.swap(layer, norm, _folded_norm(getattr(layer, norm), options))
    if getattr(config, "tie_word_embeddings", False):
        head = SecureLinear(table.transpose(0, 1))
        final_norm = _norm(inner.norm, "norm", options)
    else:
        head = SecureLinear.fused([model.lm_head], "lm_head", options,
                                  input_gain=inner.norm.weight)
        final_norm = _folded_norm(inner.norm, options)
    handle.swap(inner, "norm", final_norm)
    handle.swap(model, "lm_head", head)
    return handle


@contextmanager
def patched(model: nn.Module, options: SecureModelOptions | None = None
            ) -> Iterator[PatchHandle]:
    """``patch`` for the duration of a ``with`` block; always restores."""
    handle = patch(model, options)
    try:
        yield handle
    finally:
        handle.restore()
