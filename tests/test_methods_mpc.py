"""Every method's plan runs under MPC through the one engine, choosing what plaintext chooses.

The baselines are lowered to the same ``MethodPlan`` as MPCache, so the secure cache
policy runs them with no code of their own: Quest (max-bound page scores, dense first
layers), InfLLM (mean-key blocks), StreamingLLM (sinks + a sliding window) and SnapKV
(observation-window static eviction, per KV head, then a sliding window). Each secure
run reveals its choices (debug mode, tests only) and must record exactly the plaintext
run's records, fed the same tokens, and generate the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from crypten_mpcache.algorithm.baselines import (
    H2OConfig,
    InfLLMConfig,
    QuestConfig,
    SnapKVConfig,
    StreamingLLMConfig,
)
from crypten_mpcache.fidelity import compare_selections, secure_records
from crypten_mpcache.plaintext import generate_fed
from crypten_mpcache.runtime.launcher import LaunchConfig
from crypten_mpcache.secure.cache.method_policy import create_policy
from crypten_mpcache.testing import save_tiny_llama

TFP = LaunchConfig(parties=2, dealer="tfp", timeout_s=600)
PROMPT, STEPS, LAYERS = 96, 3, 3


def _run_both(folder: str, config: object) -> tuple[dict, list[dict], list[int]]:
    ids = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, 40, (PROMPT,), generator=ids).tolist()
    client = secure_records(folder, prompt, STEPS, config, TFP)
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    greedy, _, records = generate_fed(model, config, prompt, STEPS, feed=client["tokens"],
                                      record=True)
    return client, records, greedy


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Tiny Llamas by seed, saved once for the module."""
    path: Path = tmp_path_factory.mktemp("methods")
    return {seed: save_tiny_llama(path / f"m{seed}", seed, kv_heads=2, layers=LAYERS, vocab=40,
                                  qk_gain=10.0, lm_head_gain=4.0, max_positions=256)
            for seed in (11, 18)}


# Seeds whose plaintext choices have margins well above CrypTen's fixed-point noise
# (top-k gaps >= 1% of the largest score for the per-step choices) and logit gaps >= 0.06,
# so that equality tests the algorithm, not rounding.
@pytest.mark.parametrize("config,seed", [
    (QuestConfig(budget=40, page_size=8), 18),
    (InfLLMConfig(budget=40, block_size=8, sink_tokens=4, local_tokens=8), 18),
    (StreamingLLMConfig(budget=40, sink_tokens=4), 18),
    (SnapKVConfig(budget=16, window_tokens=8, pool_kernel=3), 11),
], ids=["quest", "infllm", "streaming", "snapkv"])
def test_baseline_choices_under_mpc_equal_plaintext(folders: dict[int, str], config: object,
                                                   seed: int) -> None:
    client, plain, greedy = _run_both(folders[seed], config)
    secure = client["selections"]
    assert client["tokens"] == greedy
    assert len(secure) == LAYERS * (1 + STEPS - 1)
    report = compare_selections(secure, plain)
    if isinstance(config, SnapKVConfig):
        # SnapKV's static importances are sums of softmax probabilities, which the secure
        # exp computes a few % off, and max pooling makes plateaus of near-equal values at
        # the cut: a layer's static cut may move by a token or two under MPC (seen in
        # ~1 of 3 runs). Everything public is exact; per KV head, the kept and attended
        # positions must overlap the plaintext ones by at least 3/4 (of 16 positions the
        # 8 of the window are always shared: a first-k choice shares about 9).
        assert all(f == "positions" for _, f in report.mismatches), report.mismatches
        by_key = {(r["phase"], r["step"], r["layer"]): r for r in plain}
        for record in secure:
            other = by_key[(record["phase"], record["step"], record["layer"])]
            for mine, theirs in zip(record["positions"].flatten(0, 1).tolist(),
                                    other["positions"].flatten(0, 1).tolist(), strict=True):
                assert len(set(mine) & set(theirs)) >= 0.75 * len(theirs), (record, other)
    else:
        assert report.all_equal, report.mismatches
    decode = [r for r in secure if r["phase"] == "decode"]
    plan = config.plan()
    # the budget binds: every non-dense decode query attends fewer tokens than it has seen
    for record in decode:
        if record["layer"] not in plan.dense_layers:
            assert record["attended"] <= plan.budget < PROMPT + record["step"], record
    if plan.decode == "select":  # the query-aware choice really chose among clusters
        chosen = [r["clusters"] for r in decode if r["layer"] not in plan.dense_layers]
        assert chosen and all(c is not None and c.numel() > 0 for c in chosen)
        assert client["cost"]["operators"]["topk"]["bytes"] > 0
    if plan.static is not None and plan.static.score == "window":
        kept = [r for r in secure if r["phase"] == "prefill"]
        assert all(r["cache"] < PROMPT for r in kept)  # static eviction evicted


def test_decode_time_heavy_hitters_are_refused_under_mpc() -> None:
    with pytest.raises(ValueError, match="accumulated attention"):
        create_policy(H2OConfig(budget=40), n_layers=LAYERS)
