"""Shared test fixtures: tiny config-built Llama models (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest

import crypten_mpcache  # noqa: F401  (applies the CrypTen compatibility patches first)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download at run time


def tiny_llama_config(*, kv_heads: int = 2, heads: int = 4, layers: int = 2, hidden: int = 32,
                      vocab: int = 64, seed: int = 0):
    """A small LlamaConfig: MHA when kv_heads == heads, GQA otherwise."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attn_implementation="eager",
    )


@pytest.fixture
def tiny_llama_factory():
    """Builds a tiny LlamaForCausalLM with seeded weights."""
    import torch
    from transformers import LlamaForCausalLM

    def build(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config(**kwargs))
        model.eval()
        return model

    return build
