"""Explicit, reversible patch of a transformers Llama-family model instance for CrypTen.

The family: LlamaForCausalLM and Qwen2ForCausalLM (same decoder; Qwen2's q/k/v biases are
encrypted and premasked with their weights by ``SecureLinear.fused``).

Why a patch of one instance (not of the class): nothing else in the process changes, and
``restore()`` puts back the very module objects that were replaced. What is replaced:
``embed_tokens``, every layer's ``self_attn`` (q/k/v fused into one product, and o),
``mlp`` (gate/up fused), both RMSNorms, the final norm and ``lm_head`` (tied to the
embedding table when the config says so). Run the patched model with
``crypten_mpcache.models.llama.secure_forward``.

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


def _norm(norm: nn.Module, name: str, options: SecureModelOptions) -> SecureRMSNorm:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return SecureRMSNorm(encrypt_operand(norm.weight, name, options), eps, options.norm)


def _attention(attn: nn.Module, config: object, index: int,
               options: SecureModelOptions) -> SecureLlamaAttention:
    qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
    projections = {"qkv_proj": SecureLinear.fused(qkv, f"layer{index}/qkv_proj", options),
                   "o_proj": SecureLinear.from_linear(attn.o_proj, f"layer{index}/o_proj",
                                                      options)}
    return SecureLlamaAttention(config, index, projections, options)


def _mlp(mlp: nn.Module, index: int, options: SecureModelOptions) -> SecureMLP:
    act = getattr(mlp.config, "hidden_act", "silu") if hasattr(mlp, "config") else "silu"
    if act != "silu":
        raise ValueError(f"only SiLU MLPs are supported, got hidden_act={act!r}")
    gate_up = SecureLinear.fused([mlp.gate_proj, mlp.up_proj], f"layer{index}/gate_up_proj",
                                 options)
    down = SecureLinear.from_linear(mlp.down_proj, f"layer{index}/down_proj", options)
    return SecureMLP(gate_up, down, options.activation)


def patch(model: nn.Module, options: SecureModelOptions | None = None) -> PatchHandle:
    """Replace the weight-holding modules of ``model`` by encrypted ones (in place)."""
    _architecture(model)
    options = options or SecureModelOptions()
    config = model.config
    inner = model.model
    handle = PatchHandle(model)
    table = encrypt_operand(inner.embed_tokens.weight, "embed_tokens", options)
    handle.swap(inner, "embed_tokens", SecureEmbedding(table))
    for index, layer in enumerate(inner.layers[: config.num_hidden_layers]):
        handle.swap(layer, "self_attn", _attention(layer.self_attn, config, index, options))
        handle.swap(layer, "mlp", _mlp(layer.mlp, index, options))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            handle.swap(layer, norm, _norm(getattr(layer, norm), f"layer{index}/{norm}",
                                           options))
    handle.swap(inner, "norm", _norm(inner.norm, "norm", options))
    if getattr(config, "tie_word_embeddings", False):
        head = SecureLinear(table.transpose(0, 1))
    else:
        head = SecureLinear.from_linear(model.lm_head, "lm_head", options)
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
