"""Baselines: validated configs, same budget accounting, behaviour on a tiny Llama."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import crypten_mpcache  # noqa: F401
from crypten_mpcache.algorithm.baselines import (
    BASELINES,
    FullCacheConfig,
    H2OConfig,
    InfLLMConfig,
    QuestConfig,
    SnapKVConfig,
    StreamingLLMConfig,
)
from crypten_mpcache.algorithm.plan import budget_tokens, resolve_tokens
from crypten_mpcache.plaintext import apply

PROMPT, NEW, BUDGET = 160, 4, 0.3


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 96, (1, PROMPT), generator=torch.Generator().manual_seed(3))


def _run(model, prompt, method):
    with torch.no_grad(), apply(model, method) as session:
        model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    return session


def test_registry_and_validation() -> None:
    assert set(BASELINES) == {"full", "streaming", "snapkv", "h2o", "quest", "infllm"}
    with pytest.raises(ValueError):
        SnapKVConfig(budget=1.5)
    with pytest.raises(ValueError):
        SnapKVConfig(pool_kernel=4)
    with pytest.raises(ValueError):
        H2OConfig(recent_ratio=0.0)
    with pytest.raises(ValueError):
        QuestConfig(page_size=0)


@pytest.mark.parametrize("name", ["streaming", "snapkv", "h2o", "quest", "infllm"])
def test_every_step_attends_within_budget(model, prompt, name) -> None:
    method = BASELINES[name](budget=BUDGET)
    session = _run(model, prompt, method)
    decode = session.decode_records()
    assert decode
    dense = set(method.plan().dense_layers)
    for rec in decode:
        limit = budget_tokens(BUDGET, PROMPT + rec["step"])
        if rec["layer"] in dense:
            assert rec["attended"] == PROMPT + rec["step"]
        else:
            assert rec["attended"] <= limit
            assert rec["attended"] >= limit - 16  # budgets are used, not wasted


def test_streaming_is_sinks_plus_recent(model, prompt) -> None:
    session = _run(model, prompt, StreamingLLMConfig(budget=BUDGET, sink_tokens=4))
    for rec in session.decode_records():
        seen = PROMPT + rec["step"]
        pos = rec["positions"][0, 0].tolist()
        assert pos[:4] == [0, 1, 2, 3]
        assert pos[4:] == list(range(seen - len(pos) + 4, seen))


def test_static_methods_physically_shrink_the_cache(model, prompt) -> None:
    for method in (SnapKVConfig(budget=BUDGET), H2OConfig(budget=BUDGET)):
        session = _run(model, prompt, method)
        for rec in session.decode_records():
            assert rec["cache"] == rec["attended"]


def test_snapkv_keeps_window_and_h2o_keeps_recent(model, prompt) -> None:
    session = _run(model, prompt, SnapKVConfig(budget=BUDGET, window_tokens=32))
    prefill = [r for r in session.records if r["phase"] == "prefill"]
    for rec in prefill:
        assert rec["positions"][0, 0, -32:].tolist() == list(range(PROMPT - 32, PROMPT))
    session = _run(model, prompt, H2OConfig(budget=BUDGET, recent_ratio=0.5))
    recent = resolve_tokens(BUDGET * 0.5, PROMPT)
    for rec in [r for r in session.records if r["phase"] == "prefill"]:
        tail = rec["positions"][0, 0, -recent:].tolist()
        assert tail == list(range(PROMPT - recent, PROMPT))


def test_quest_and_infllm_keep_full_cache_and_select(model, prompt) -> None:
    for method in (QuestConfig(budget=BUDGET), InfLLMConfig(budget=BUDGET)):
        session = _run(model, prompt, method)
        for rec in session.decode_records():
            assert rec["cache"] == PROMPT + rec["step"]
            assert rec["positions"][0, 0, -1].item() == PROMPT + rec["step"] - 1


def test_full_cache_baseline_matches_plain_model(model, prompt) -> None:
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
        with apply(model, FullCacheConfig()):
            out = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(ref, out)
