"""Real layer dimensions of the benchmarked models, as transformers LlamaConfigs.

Qwen2 shapes are Llama-family decoders with q/k/v biases (``qkv_bias``): the same
LlamaConfig (RoPE theta 1e6) drives the layer, and the biases are encrypted and premasked
with their weights; adding them is local, so a step's transcript changes only in setup.

Why random weights suffice: the MPC transcript (bytes, rounds) of a step is a function of
public shapes only, never of secret values (``tests/test_bench.py`` checks it). Only the
per-layer dimensions matter; the vocabulary is kept small because the LM head and argmax
are the same for every cache policy and are not part of the per-layer comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig


@dataclass(frozen=True)
class ModelShape:
    """The public dimensions of one Llama-family decoder layer (and the model's depth)."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    depth: int  # layers of the real model (for the whole-model estimate)
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-5
    vocab: int = 256  # small on purpose: the LM head is not benchmarked per layer
    qkv_bias: bool = False  # Qwen2: biases on q/k/v (encrypted, premasked with W)

    def __post_init__(self) -> None:
        for field in ("hidden", "heads", "kv_heads", "head_dim", "mlp", "depth", "vocab"):
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name}: {field} must be >= 1")
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.name}: heads ({self.heads}) must be a multiple of "
                             f"kv_heads ({self.kv_heads})")

    def llama_config(self, layers: int):
        """A LlamaConfig with ``layers`` decoder layers of this shape."""
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        return LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.mlp,
            num_hidden_layers=layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
            max_position_embeddings=32_768, rms_norm_eps=self.rms_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=False, attn_implementation="eager")

    def layer_weight_elements(self) -> int:
        """Elements of one layer's weights (q, k, v, o, gate, up, down, two norms, and the
        q/k/v biases if any)."""
        attn = self.hidden * self.heads * self.head_dim * 2
        attn += self.hidden * self.kv_heads * self.head_dim * 2
        if self.qkv_bias:
            attn += (self.heads + 2 * self.kv_heads) * self.head_dim
        return attn + 3 * self.hidden * self.mlp + 2 * self.hidden

    def kv_elements(self, context: int) -> int:
        """Elements of one layer's K and V for ``context`` tokens."""
        return 2 * self.kv_heads * context * self.head_dim


SHAPES: dict[str, ModelShape] = {
    "smollm2": ModelShape("smollm2", hidden=576, heads=9, kv_heads=3, head_dim=64, mlp=1536,
                          depth=30, rope_theta=100_000.0),
    "llama2-7b": ModelShape("llama2-7b", hidden=4096, heads=32, kv_heads=32, head_dim=128,
                            mlp=11008, depth=32),
    "llama3-8b": ModelShape("llama3-8b", hidden=4096, heads=32, kv_heads=8, head_dim=128,
                            mlp=14336, depth=32, rope_theta=500_000.0),
    "qwen2.5-7b": ModelShape("qwen2.5-7b", hidden=3584, heads=28, kv_heads=4, head_dim=128,
                             mlp=18944, depth=28, rope_theta=1_000_000.0, rms_eps=1e-6,
                             qkv_bias=True),
    # for tests and smoke runs only
    "tiny": ModelShape("tiny", hidden=32, heads=4, kv_heads=2, head_dim=8, mlp=64, depth=4),
    "tiny-qwen2": ModelShape("tiny-qwen2", hidden=32, heads=4, kv_heads=1, head_dim=8, mlp=64,
                             depth=4, rope_theta=1_000_000.0, rms_eps=1e-6, qkv_bias=True),
}


def get_shape(name: str) -> ModelShape:
    """The shape called ``name``, or a ValueError listing the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}") from None
