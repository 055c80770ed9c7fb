"""apply(): exact full-cache equivalence, real eviction, restore, records (tiny Llamas)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import crypten_mpcache  # noqa: F401  (compat patches first)
from crypten_mpcache.algorithm.plan import budget_tokens, resolve_tokens
from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.plaintext import EvictedLayer, apply

PROMPT = 200
NEW = 4


def _tiny(kv_heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=kv_heads,
                      max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def model(request) -> LlamaForCausalLM:
    return _tiny(request.param)


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 128, (1, PROMPT), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full_run(model, prompt):
    """The plain model's greedy run (shared by the equivalence tests)."""
    return _generate(model, prompt)[0]


@pytest.fixture(scope="module")
def evicting_run(model, prompt):
    """One MPCache run at budget 0.2 (shared by the tests that inspect its records)."""
    return _generate(model, prompt, MPCacheConfig.from_budget(0.2))


def _generate(model, ids, method=None, new=NEW):
    with torch.no_grad():
        if method is None:
            return model.generate(ids, max_new_tokens=new, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True), None
        with apply(model, method) as session:
            out = model.generate(ids, max_new_tokens=new, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        return out, session


@pytest.mark.parametrize("method", [MPCacheConfig.from_budget(1.0), MPCacheConfig(budget=10_000)],
                         ids=["budget-1.0", "short-cache"])
def test_full_budget_gives_exactly_full_cache_logits(model, prompt, full_run, method) -> None:
    ref = full_run
    out, session = _generate(model, prompt, method)
    for a, b in zip(ref.scores, out.scores, strict=True):
        assert torch.equal(a, b)
    assert session.max_attended() == PROMPT + NEW - 1


def test_eviction_attends_within_budget(model, evicting_run) -> None:
    method = MPCacheConfig.from_budget(0.2)
    _, session = evicting_run
    decode = session.decode_records()
    assert len(decode) == (NEW - 1) * model.config.num_hidden_layers
    keep = resolve_tokens(method.static_keep, PROMPT)
    for rec in decode:
        seen = PROMPT + rec["step"]
        assert rec["attended"] <= budget_tokens(0.2, seen)
        assert rec["attended"] < rec["cache"] == keep + rec["step"]
        assert rec["positions"].shape[-1] == rec["attended"]
    prefill = [r for r in session.records if r["phase"] == "prefill"]
    assert all(r["cache"] == keep for r in prefill)


def test_cache_is_really_compacted_and_reports_logical_length(model, prompt) -> None:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad(), apply(model, MPCacheConfig()):
        model(prompt, cache=cache, use_cache=True)
    keep = resolve_tokens(0.3, PROMPT)
    assert all(isinstance(layer, EvictedLayer) for layer in cache.layers)
    assert cache.layers[0].keys.shape[-2] == keep
    assert cache.get_seq_length() == PROMPT


def test_manual_loop_matches_generate(model, prompt, evicting_run) -> None:
    method = MPCacheConfig.from_budget(0.2)
    ref, _ = evicting_run
    tokens = []
    with torch.no_grad(), apply(model, method):
        out = model(prompt, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(NEW):
            tokens.append(nxt.item())
            out = model(nxt, cache=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    assert tokens == ref.sequences[0, PROMPT:].tolist()


def test_restores_model_on_exit_and_on_exception(model, prompt) -> None:
    from transformers.modeling_utils import AttentionInterface

    before = model.config._attn_implementation
    names = set(AttentionInterface._global_mapping)
    with pytest.raises(RuntimeError, match="boom"), apply(model, MPCacheConfig()):
        assert model.config._attn_implementation != before
        raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    assert set(AttentionInterface._global_mapping) == names
    assert all(not m._forward_pre_hooks for m in model.modules())
    with apply(model, MPCacheConfig()):
        pass
    assert model.config._attn_implementation == before
    with torch.no_grad():
        assert model(prompt[:, :50]).logits.isfinite().all()


def test_selections_are_deterministic(model, prompt, evicting_run) -> None:
    method = MPCacheConfig.from_budget(0.2)
    _, first = evicting_run
    _, second = _generate(model, prompt, method)
    assert len(first.records) == len(second.records)
    for a, b in zip(first.records, second.records, strict=True):
        assert torch.equal(a["positions"], b["positions"])


def test_sink_and_recent_always_attended_and_sharing(evicting_run) -> None:
    method = MPCacheConfig.from_budget(0.2)
    _, session = evicting_run
    sink, recent = method.sink_tokens, method.recent_tokens
    for rec in session.decode_records():
        seen = PROMPT + rec["step"]
        pos = rec["positions"][0, 0].tolist()
        assert pos[:sink] == list(range(sink))
        assert pos[-1] == seen - 1
        assert pos == sorted(pos) and len(set(pos)) == len(pos)
        assert len(pos) >= sink + recent
    by_key = {(r["step"], r["layer"]): r for r in session.decode_records()}
    assert session.schedule == (0, 1, 2, 2, 4, 5)  # 2 head + 2 tail alone; 3 reuses 2
    for (step, layer), rec in by_key.items():
        selector = session.schedule[layer]
        assert torch.equal(rec["positions"], by_key[(step, selector)]["positions"])


def test_tuned_default_selects_per_layer_one_choice_for_all_heads(model, prompt) -> None:
    """MPCacheConfig.default(): no static stage, every layer selects on its own, and one
    selection per layer is shared by its KV heads; decode stays within the budget."""
    method = MPCacheConfig.default(budget=0.4, sink_tokens=4, recent_tokens=4)
    _, session = _generate(model, prompt, method)
    assert session.schedule == tuple(range(6))
    budget = budget_tokens(0.4, PROMPT + NEW)
    for rec in session.decode_records():
        assert rec["selector"] == rec["layer"] and rec["cache"] == PROMPT + rec["step"]
        assert rec["attended"] <= budget
        pos, clusters = rec["positions"][0], rec["clusters"][0]
        assert clusters.shape[-1] > 0
        assert all(torch.equal(pos[0], p) for p in pos)
        assert all(torch.equal(clusters[0], c) for c in clusters)
    assert session.max_attended() < PROMPT


# -- real model: passkey retrieval on the embedded SmolLM2 (slow) -------------------------

def _passkey_prompt(tokenizer, n_tokens: int, key: str, depth: float) -> torch.Tensor:
    """Essay text with a 5-digit pass key at ``depth``, the question at the end (chat)."""
    from crypten_mpcache.assets import essay_texts

    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    ids = tokenizer(" ".join(essay_texts()), add_special_tokens=False).input_ids
    hay = ids[: n_tokens - 70]
    cut = int(len(hay) * depth)
    context = tokenizer.decode(hay[:cut]) + needle + tokenizer.decode(hay[cut:])
    question = "\n\nWhat is the pass key? Answer with the number only."
    chat = [{"role": "user", "content": context + question}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def _passkey_run(model, tokenizer, method, ids: torch.Tensor) -> tuple[str, int]:
    with torch.no_grad(), apply(model, method, record=True) as session:
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text, session.max_attended()


@pytest.mark.slow
def test_smollm2_passkey_full_cache_and_mpcache_budgets() -> None:
    """Full cache finds the passkey at ~2k tokens; the shipped MPCache default finds it
    too from budget 0.2 on (README, results/NOTES.md: parity with the full cache from 0.2
    on 20 passkeys at 2k), attending to no more than its budget; 0.1 is reported only.
    Measured here (one sample, depth 0.5, 2047 tokens, ~160 s): full, 0.2, 0.3 find the
    key, 0.1 answers '712'."""
    from transformers import AutoTokenizer

    from crypten_mpcache.assets import smollm2_folder
    from crypten_mpcache.methods import resolve_method

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    keys = ["71432", "38095", "52817"]
    budgets = (0.1, 0.2, 0.3)
    results: dict[str, list[bool]] = {}
    attended_max: dict[str, int] = {}
    # one depth keeps this under ~10 min on a loaded 2-core machine; add 0.1 / 0.9 at will
    for depth, key in zip((0.5,), keys, strict=False):
        ids = _passkey_prompt(tokenizer, 2048, key, depth)
        methods = {"full": None}
        for budget in budgets:
            method = resolve_method("mpcache", budget)  # the shipped default at this budget
            assert method == MPCacheConfig.from_budget(
                budget, **MPCacheConfig.default_overrides())
            methods[f"mpcache@{budget}"] = method
        for name, method in methods.items():
            text, attended = _passkey_run(model, tokenizer, method, ids)
            results.setdefault(name, []).append(key in text)
            attended_max[name] = max(attended, attended_max.get(name, 0))
            print(f"depth={depth} len={ids.shape[1]} {name}: {text!r} "
                  f"max_attended={attended}", flush=True)
        for budget in budgets:  # 12 new tokens: the last step has seen len + 12 tokens
            limit = budget_tokens(budget, ids.shape[1] + 12)
            assert attended_max[f"mpcache@{budget}"] <= limit, (budget, attended_max)
    print({name: f"{sum(hits)}/{len(hits)}" for name, hits in results.items()})
    assert all(results["full"]), results
    assert all(results["mpcache@0.2"]) and all(results["mpcache@0.3"]), results
