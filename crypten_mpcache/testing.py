"""Tiny, config-built checkpoints for tests and demos (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_llama_checkpoint(folder: Path, *, seed: int = 0, kv_heads: int = 2,
                          layers: int = 2, context: int = 256) -> Path:
    """A tiny random Llama with SmolLM2's public tokenizer, saved like a real checkpoint.

    The vocabulary is the real one (49,152) so that text prompts, chat templates and the
    secure argmax over a real-sized vocabulary are exercised; everything else is tiny.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from crypten_mpcache.assets import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder()))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=kv_heads, max_position_embeddings=context,
                         tie_word_embeddings=True)
    folder = Path(folder)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
