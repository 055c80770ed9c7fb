"""Tiny, config-built checkpoints for tests and demos (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


def tiny_llama(seed: int, *, kv_heads: int = 2, layers: int = 2, vocab: int = 40,
               hidden: int = 32, max_positions: int = 128, tie: bool = False,
               qk_gain: float = 1.0, lm_head_gain: float = 1.0,
               **config: Any) -> LlamaForCausalLM:
    """A tiny random Llama (4 attention heads) in eval mode, the same for the same arguments.

    The norm gammas are drawn as 1 + 0.2 * randn (right after the seeded init, in
    parameter order) so that the secure RMSNorm is really tested, not multiplied by ones.
    ``qk_gain`` scales the query/key projections (peaky attention: top-k choices with
    margins far above fixed-point noise); ``lm_head_gain`` scales the LM head (wider logit
    gaps; with ``tie`` it scales the shared embedding too). ``config``: extra LlamaConfig
    fields (e.g. ``attn_implementation="eager"``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llama_config = LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                               intermediate_size=2 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=kv_heads,
                               max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                               tie_word_embeddings=tie, **config)
    model = LlamaForCausalLM(llama_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            if qk_gain != 1.0 and ("q_proj" in name or "k_proj" in name):
                param.mul_(qk_gain)
        if lm_head_gain != 1.0:
            model.lm_head.weight.mul_(lm_head_gain)
    return model


def save_tiny_llama(folder: Path | str, seed: int, **kwargs: Any) -> str:
    """``tiny_llama(seed, **kwargs)`` saved as a checkpoint folder (for the private
    generation entry points, which load a model by path); returns the folder as a str."""
    tiny_llama(seed, **kwargs).save_pretrained(folder)
    return str(folder)


def assert_same_transcript(first_cost: dict, second_cost: dict) -> None:
    """Two runs' ``cost`` dicts (as in a generation result) show the same communication:
    bytes and rounds of setup, prefill, every decode step and every operator.

    Used to check that what the parties exchange does not depend on the private prompt.
    """
    for key in ("setup", "prefill"):
        assert (first_cost[key]["bytes"], first_cost[key]["rounds"]) == \
            (second_cost[key]["bytes"], second_cost[key]["rounds"]), key
    for a, b in zip(first_cost["decode"], second_cost["decode"], strict=True):
        assert (a["bytes"], a["rounds"]) == (b["bytes"], b["rounds"]), a["step"]
    assert first_cost["operators"].keys() == second_cost["operators"].keys()
    for kind, value in first_cost["operators"].items():
        other = second_cost["operators"][kind]
        assert (value["bytes"], value["rounds"]) == (other["bytes"], other["rounds"]), kind


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


def exact_plain(x: Any) -> torch.Tensor:
    """Decode an MPCTensor as raw / scale in float64, TESTS ONLY (reveals to everyone).

    Independent of CrypTen's ``FixedPointEncoder.decode`` (which, unpatched, decodes
    -k + r/2**16 with r < k as -k - 1 + r/2**16), so value checks cannot inherit it.
    """
    return x._tensor.reveal().double() / x.encoder.scale


def secure_greedy(model: torch.nn.Module, ids: list[int], steps: int,
                  premask: bool = True) -> dict[str, torch.Tensor]:
    """Inside every party: patch ``model``, prefill ``ids`` (party 1's), decode ``steps``
    tokens with the secure argmax fed back, restore. TESTS ONLY: the logits of each step
    are revealed (``exact_plain``) so they can be compared with plaintext; also returns
    the cache length of every layer."""
    import crypten

    from crypten_mpcache.models.llama import SecureModelOptions, secure_argmax, secure_forward
    from crypten_mpcache.patches.transformers_llama import patch
    from crypten_mpcache.secure.kv_cache import SecureKVCache

    handle = patch(model, SecureModelOptions(premask=premask))
    cache = SecureKVCache(model.config.num_hidden_layers, premask=premask)
    onehot = torch.nn.functional.one_hot(torch.tensor([ids]), model.config.vocab_size)
    x = crypten.cryptensor(onehot.float(), src=1)
    logits, position = [], 0
    for _ in range(steps):
        out = secure_forward(model, x, cache, position)
        position += int(x.shape[1])
        logits.append(exact_plain(out).reshape(-1))
        x = secure_argmax(out)
    lengths = [cache.get_seq_length(i) for i in range(model.config.num_hidden_layers)]
    handle.restore()
    return {"logits": torch.stack(logits), "cache_lengths": torch.tensor(lengths)}


def plaintext_greedy(model: torch.nn.Module, ids: list[int], steps: int
                     ) -> tuple[list[int], torch.Tensor]:
    """The plaintext reference of ``secure_greedy``: greedy ids and the (steps, vocab)
    logits, recomputed from the whole sequence at every step (no cache to get wrong)."""
    sequence, logits = list(ids), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(torch.tensor([sequence])).logits[0, -1]
            logits.append(last)
            sequence.append(int(last.argmax()))
    return sequence[len(ids):], torch.stack(logits)
