"""Qwen2 (biased q/k/v, untied LM head, RoPE theta 1e6, GQA) through the Llama-family
adapter: private greedy tokens and MPCache selections equal plaintext, ``apply`` works, the
biases are encrypted and premasked, and other architectures still fail with one line.

Seed 32 (tiny_qwen2: 3 layers, GQA 4:1, q/k x10, LM head x4, 160-token prompt from seed
132) was chosen by scanning seeds 0-59 in plaintext for the default MPCache at 64 tokens:
its smallest top-k margin is 3.9% of the largest cluster score (CrypTen's exp is a few %
off on probabilities, the scores themselves ~1e-4) and its smallest top-2 logit gap is 0.34
(mpcache) / 0.37 (full cache, first 20 tokens), against logit errors below 0.1.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from crypten_mpcache.fidelity import compare_selections, secure_records
from crypten_mpcache.generation_party import PartyTask, generation_party
from crypten_mpcache.methods import resolve_method
from crypten_mpcache.models import UnsupportedArchitectureError, check_architecture
from crypten_mpcache.plaintext import apply, generate_fed
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.testing import save_tiny_llama, tiny_qwen2, topk_margins

SEED, STEPS = 32, 4
TFP = LaunchConfig(parties=2, dealer="tfp", timeout_s=600)
KNOBS = {"layers": 3, "kv_heads": 1, "qk_gain": 10.0, "lm_head_gain": 4.0,
         "max_positions": 256}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("qwen2")
    return save_tiny_llama(path / "q", SEED, family="qwen2", **KNOBS)


def prompt(length: int) -> list[int]:
    return torch.randint(0, 40, (160,), generator=torch.Generator().manual_seed(100 + SEED)
                         ).tolist()[:length]


def test_qwen2_is_supported_and_others_fail_with_one_line():
    from transformers import MistralConfig, MistralForCausalLM

    from crypten_mpcache.patches.transformers_llama import patch

    assert check_architecture("Qwen2ForCausalLM") == "Qwen2ForCausalLM"
    mistral = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16,
                                               intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedArchitectureError) as error:
        patch(mistral)
    assert "\n" not in str(error.value) and "Qwen2ForCausalLM" in str(error.value)
    with pytest.raises(ValueError, match="sliding-window") as error:
        patch(tiny_qwen2(0, use_sliding_window=True, sliding_window=8, max_window_layers=0))
    assert "\n" not in str(error.value)


def test_apply_full_cache_equals_the_models_own_greedy():
    model = tiny_qwen2(SEED, **KNOBS)
    ids = torch.tensor([prompt(40)])
    with torch.no_grad():
        own = model.generate(ids, max_new_tokens=6, do_sample=False)
        with apply(model, None) as session:
            applied = model.generate(ids, max_new_tokens=6, do_sample=False)
        with apply(model, resolve_method("mpcache", 64)) as budgeted:
            model.generate(torch.tensor([prompt(160)]), max_new_tokens=3, do_sample=False)
    assert torch.equal(own, applied)
    assert session.records and 0 < budgeted.max_attended() < 160


def test_private_tokens_equal_plaintext_with_the_full_cache(folder):
    config = PrivateGenerationConfig(max_new_tokens=STEPS, model_path=folder, dealer="tfp",
                                     progress=False, check=True)
    result = generate_ids(prompt(20), config)
    assert result.match, (result.generated_ids, result.plaintext_ids)
    assert result.max_abs_logit_error < 0.1


def test_mpcache_selections_and_tokens_equal_plaintext(folder):
    config = resolve_method("mpcache", 64)
    ids = prompt(160)
    client = secure_records(folder, ids, STEPS, config, TFP)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with topk_margins() as margins:
        greedy, _, records = generate_fed(model, config, ids, STEPS, feed=client["tokens"],
                                          record=True)
    assert margins and min(margins) > 1e-2  # decided by the algorithm, not by rounding
    assert client["tokens"] == greedy
    decode = [r for r in client["selections"] if r["phase"] == "decode"]
    assert any(r["clusters"] is not None and r["clusters"].numel() > 0 for r in decode)
    report = compare_selections(client["selections"], records)
    assert report.all_equal, report.mismatches


def bias_party(task: PartyTask) -> dict:
    """generation_party, plus what the patched biases are (type of operand, per party)."""
    from crypten_mpcache.models import llama

    kinds: list[str] = []
    original = llama.SecureLinear.__init__

    def recording(self, weight_t, bias=None, kind="linear", splits=None):
        if bias is not None:
            kinds.append((type(bias).__name__, splits))
        original(self, weight_t, bias, kind, splits)

    llama.SecureLinear.__init__ = recording
    try:
        output = generation_party(task)
    finally:
        llama.SecureLinear.__init__ = original
    output["bias_operands"] = kinds
    return output


def test_biases_are_encrypted_and_premasked_and_the_client_holds_none(folder):
    real = {n: float(p.detach().double().sum()) for n, p in
            AutoModelForCausalLM.from_pretrained(folder).named_parameters()}
    biases = [n for n in real if n.endswith(".bias")]
    assert len(biases) == 3 * 3 and all(abs(real[n]) > 1e-3 for n in biases)
    task = PartyTask(folder, tuple(prompt(8)), 2, True, "full", True, False)
    owner, client = launch(bias_party, task, config=LaunchConfig(parties=2, dealer="tfp"))
    assert owner["checksums"] == pytest.approx(real)
    assert client["checksums"] == dict.fromkeys(real)  # meta device: no values at all
    config = AutoConfig.from_pretrained(folder)
    head_dim = config.hidden_size // config.num_attention_heads
    widths = (config.num_attention_heads * head_dim,) + (config.num_key_value_heads * head_dim,) * 2
    for party in (owner, client):  # q|k|v of 3 layers, premasked with their weights
        assert party["bias_operands"] == [("FixedOperand", widths)] * 3


def test_bench_qwen2_shapes():
    from crypten_mpcache.bench.runner import BenchConfig, run_bench
    from crypten_mpcache.bench.shapes import get_shape

    qwen = get_shape("qwen2.5-7b")
    assert (qwen.hidden, qwen.heads, qwen.kv_heads, qwen.head_dim, qwen.mlp, qwen.depth) == \
        (3584, 28, 4, 128, 18944, 28)
    assert qwen.qkv_bias and qwen.llama_config(1).rope_parameters["rope_theta"] == 1e6
    tiny = get_shape("tiny-qwen2")
    assert tiny.layer_weight_elements() == \
        replace(tiny, qkv_bias=False).layer_weight_elements() + (4 + 2 * 1) * 8
    config = BenchConfig(shape="tiny-qwen2", layers=1, contexts=(160,),
                         caches=("full", "mpcache"), dealer="tfp", steps=1, budget=0.3)
    rows = run_bench(config).as_dict()["rows"]
    assert [r["cache"] for r in rows] == ["full", "mpcache"]
    assert all(r["bytes"] > 0 and r["rounds"] > 0 for r in rows)
    assert rows[1]["operators"]["topk"]["bytes"] > 0
