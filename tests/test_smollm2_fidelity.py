"""Private generation stays faithful on SmolLM2-like numerics (massive activations, sinks).

The embedded SmolLM2-135M has residual activations up to |x| = 25,199 (mean(x^2) at an
RMSNorm input up to 1.1e6) on its first token, and attention rows whose scores differ
by up to ~82 (measured on 1024-token essays, see docs/numerics.md). A tiny Llama whose
weights reproduce both (a massive BOS channel that every key reads: an attention sink)
runs here in seconds; the real model runs in the slow test.
"""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
import crypten_mpcache.secure.primitives.premask  # noqa: F401  (patches the TTP dealer in the parent)
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.testing import plaintext_greedy, secure_greedy, tiny_llama

MASSIVE_CHANNEL, SHARED_CHANNEL = 7, 3
PROMPT = [0, 5, 17, 3, 40, 22, 9, 11]  # token 0 plays BOS: the massive sink token


def build_massive_llama(seed: int = 0, massive: float = 25_000.0, sink: float = 6.0):
    """A 2-layer Llama with SmolLM2's hard numerics.

    - Token 0's embedding holds ``massive`` on one channel, so the residual stream and
      every RMSNorm input of the BOS row are massive (mean(x^2) ~ 1e7) in every layer.
    - Every key reads that channel and every query reads a channel all tokens share, so
      the BOS key wins every row by ~100 (a sink; score differences down to ~ -105).
    - The LM head is scaled so that the greedy margin is well above the MPC error.
    """
    model = tiny_llama(seed, vocab=48, hidden=64, lm_head_gain=40.0,
                       attn_implementation="eager")  # plaintext_extremes hooks eager
    with torch.no_grad():
        table = model.model.embed_tokens.weight
        table.normal_(0.0, 1.0)
        table[:, MASSIVE_CHANNEL] = 0.0
        table[:, SHARED_CHANNEL] = 3.0
        table[0, MASSIVE_CHANNEL] = massive
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight[:, MASSIVE_CHANNEL] = sink / 4
            layer.self_attn.q_proj.weight[:, SHARED_CHANNEL] = 1.0
    return model


def plaintext_extremes(model, ids: list[int]) -> dict[str, float]:
    """The largest |x| entering an RMSNorm and the most negative causal score difference."""
    import transformers.models.llama.modeling_llama as modeling

    seen = {"max_abs_norm_input": 0.0, "min_score_diff": 0.0}

    def norm_hook(module, inputs, output):
        seen["max_abs_norm_input"] = max(seen["max_abs_norm_input"],
                                         float(inputs[0].abs().max()))

    original = modeling.eager_attention_forward

    def attention(module, query, key, value, mask, scaling, dropout=0.0, **kwargs):
        keys = modeling.repeat_kv(key, module.num_key_value_groups)
        scores = query @ keys.transpose(2, 3) * scaling
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        row_max = scores.masked_fill(~causal, float("-inf")).amax(-1, keepdim=True)
        diff = float((scores - row_max).masked_fill(~causal, 0.0).min())
        seen["min_score_diff"] = min(seen["min_score_diff"], diff)
        return original(module, query, key, value, mask, scaling, dropout, **kwargs)

    hooks = [m.register_forward_hook(norm_hook) for m in model.modules()
             if type(m).__name__ == "LlamaRMSNorm"]
    modeling.eager_attention_forward = attention
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        modeling.eager_attention_forward = original
        for hook in hooks:
            hook.remove()
    return seen


def secure_greedy_party(ids: list[int], steps: int, premask: bool) -> dict:
    return secure_greedy(build_massive_llama(), ids, steps, premask)


def test_tiny_model_has_smollm2_numerics():
    """The stand-in really is hard: massive norm inputs, a sink beyond SmolLM2's -82."""
    seen = plaintext_extremes(build_massive_llama(), PROMPT)
    assert seen["max_abs_norm_input"] > 20_000
    assert seen["min_score_diff"] < -90


@pytest.mark.parametrize("premask,dealer", [(True, "tfp"), (False, "ttp")])
def test_massive_activations_and_sink_match_plaintext(premask, dealer):
    steps = 3
    model = build_massive_llama()
    plain_ids, plain_logits = plaintext_greedy(model, PROMPT, steps)
    results = launch(secure_greedy_party, PROMPT, steps, premask,
                     config=LaunchConfig(parties=2, dealer=dealer, timeout_s=300))
    secure = results[0]["logits"].float()
    assert secure.argmax(-1).tolist() == plain_ids
    error = (secure - plain_logits).abs().max()
    assert error < 0.02 * plain_logits.abs().max(), f"max abs logit error {error}"


# --- the real model (slow) ---------------------------------------------------------------

REAL_LAYERS = 12  # SmolLM2's massive activation (|x| ~ 24,900) appears at layer 11


def load_smollm2(layers: int):
    from transformers import AutoModelForCausalLM

    from crypten_mpcache.assets import smollm2_folder

    return AutoModelForCausalLM.from_pretrained(str(smollm2_folder()), dtype=torch.float32,
                                                num_hidden_layers=layers).eval()


def smollm2_prompt() -> list[int]:
    from transformers import AutoTokenizer

    from crypten_mpcache.assets import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder()))
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True,
        tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def real_party(ids: list[int], steps: int) -> dict:
    return secure_greedy(load_smollm2(REAL_LAYERS), ids, steps)


@pytest.mark.slow
def test_real_smollm2_layers_with_massive_activations_match_plaintext():
    ids, steps = smollm2_prompt(), 2
    model = load_smollm2(REAL_LAYERS)
    assert plaintext_extremes(model, ids)["max_abs_norm_input"] > 20_000
    plain_ids, plain_logits = plaintext_greedy(model, ids, steps)
    secure = launch(real_party, ids, steps,
                    config=LaunchConfig(parties=2, dealer="tfp", timeout_s=900))[0]["logits"]
    assert secure.argmax(-1).tolist() == plain_ids
    assert (secure.float() - plain_logits).abs().max() < 0.25
