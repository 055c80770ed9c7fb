"""The CrypTen-aware Llama modules and the reversible patch, on tiny config-built models."""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
import crypten_mpcache.secure.primitives.premask  # noqa: F401  (patches the TTP dealer in the parent)
from crypten_mpcache.models import (
    UnsupportedArchitectureError,
    check_architecture,
    supported_architectures,
)
from crypten_mpcache.models.llama import causal_mask01
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.testing import plaintext_greedy, secure_greedy, tiny_llama

VOCAB = 48


def secure_greedy_party(seed: int, kv_heads: int, tie: bool, ids: list[int], steps: int,
                        premask: bool) -> dict:
    """Runs in every party: the tiny model, then ``testing.secure_greedy``."""
    return secure_greedy(tiny_llama(seed, kv_heads=kv_heads, tie=tie, vocab=VOCAB), ids,
                         steps, premask)


@pytest.mark.parametrize("seed,kv_heads,tie,premask,dealer", [
    (0, 4, False, True, "tfp"),   # MHA
    (1, 2, False, True, "tfp"),   # GQA
    (2, 1, True, False, "tfp"),   # MQA, tied embeddings, plain Beaver products
    (3, 2, True, True, "ttp"),    # GQA, tied, trusted dealer
])
def test_secure_greedy_matches_plaintext(seed, kv_heads, tie, premask, dealer):
    ids, steps = [5, 17, 3, 40, 22, 9], 4
    model = tiny_llama(seed, kv_heads=kv_heads, tie=tie, vocab=VOCAB)
    plain_ids, plain_logits = plaintext_greedy(model, ids, steps)
    results = launch(secure_greedy_party, seed, kv_heads, tie, ids, steps, premask,
                     config=LaunchConfig(parties=2, dealer=dealer))
    secure = results[0]["logits"].float()
    assert torch.equal(results[0]["logits"], results[1]["logits"])
    assert secure.argmax(-1).tolist() == plain_ids
    assert (secure - plain_logits).abs().max() < 0.05
    # the cache holds the prompt plus every fed-back token, in every layer
    assert results[0]["cache_lengths"].tolist() == [len(ids) + steps - 1] * 2


def restore_party() -> dict:
    from crypten_mpcache.models.llama import (
        SecureEmbedding,
        SecureLinear,
        SecureLlamaAttention,
        SecureMLP,
        SecureModelOptions,
        SecureRMSNorm,
    )
    from crypten_mpcache.patches.transformers_llama import patched

    model = tiny_llama(0, kv_heads=2, tie=True, vocab=VOCAB)
    before = {name: module for name, module in model.named_modules()}
    with patched(model, SecureModelOptions(premask=False)) as handle:
        layer = model.model.layers[0]
        replaced = [isinstance(model.model.embed_tokens, SecureEmbedding),
                    isinstance(layer.self_attn, SecureLlamaAttention),
                    isinstance(layer.mlp, SecureMLP),
                    isinstance(layer.input_layernorm, SecureRMSNorm),
                    isinstance(model.model.norm, SecureRMSNorm),
                    isinstance(model.lm_head, SecureLinear)]
        # a tied head reuses the encrypted table (same mask, no second encryption)
        tied = model.lm_head.weight_t.shape == model.model.embed_tokens.table.shape[::-1]
        # the layers' gammas live in q/k/v and gate/up; the tied head's norm keeps its own
        folded = (layer.input_layernorm.weight is None
                  and layer.post_attention_layernorm.weight is None
                  and model.model.norm.weight is not None)
        no_params = len(list(model.parameters()))
    after = {name: module for name, module in model.named_modules()}
    same = before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    return {"replaced": all(replaced), "tied": tied, "folded": folded, "restored": same,
            "handle_inactive": not handle.active, "params_while_patched": no_params}


def test_patch_replaces_and_restore_gives_back_the_originals():
    results = launch(restore_party, config=LaunchConfig(parties=2, dealer="tfp"))
    for result in results:
        assert result["replaced"] and result["tied"] and result["folded"]
        assert result["restored"] and result["handle_inactive"]
        assert result["params_while_patched"] == 0  # no plaintext weight left in the model


def test_supported_architectures_are_listed_and_enforced():
    from transformers import MistralConfig, MistralForCausalLM

    from crypten_mpcache.patches.transformers_llama import patch

    assert supported_architectures()[0] == "LlamaForCausalLM"
    assert check_architecture("LlamaForCausalLM") == "LlamaForCausalLM"
    model = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             num_key_value_heads=1))
    with pytest.raises(UnsupportedArchitectureError, match="LlamaForCausalLM"):
        patch(model)


def test_causal_mask_is_public_zero_one_and_sees_the_past():
    mask = causal_mask01(3, 5)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert causal_mask01(1, 7).tolist() == [[1.0] * 7]


def test_reveals_are_declared_in_one_registry():
    from crypten_mpcache.secure.primitives import reveal

    assert set(reveal.registered_reveals()) == set(reveal.reveal_functions())
    with pytest.raises(KeyError, match="undeclared"):
        reveal._record("peek_at_weights", torch.zeros(1))
