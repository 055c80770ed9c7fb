"""The communication transcript of a private generation does not depend on the prompt,
even when the prompts make MPCache select different clusters (trusted dealer included)."""

from __future__ import annotations

import torch

import crypten_mpcache  # noqa: F401  (compat patches first)
from crypten_mpcache.generation_party import CLIENT, PartyTask, generation_party
from crypten_mpcache.methods import resolve_method
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.testing import assert_same_transcript, save_tiny_llama

# a budget of 56 > sink + recent (32): clusters are selected; one decode step keeps it fast
PROMPT, NEW_TOKENS, BUDGET, LAYERS = 128, 2, 56, 2


def _without_seconds(report: object) -> object:
    """A meter report with every timing removed: bytes and rounds only (dealer's too)."""
    if isinstance(report, dict):
        return {k: _without_seconds(v) for k, v in report.items() if "seconds" not in k}
    if isinstance(report, list):
        return [_without_seconds(v) for v in report]
    return report


def _run(folder: str, prompt: list[int]) -> list[dict]:
    task = PartyTask(folder, tuple(prompt), NEW_TOKENS, True, "mpcache", False, False,
                     resolve_method("mpcache", BUDGET), debug_selections=True)
    return launch(generation_party, task,
                  config=LaunchConfig(parties=2, dealer="ttp", timeout_s=300))


def test_ttp_transcript_is_the_same_when_the_selected_clusters_differ(tmp_path):
    folder = save_tiny_llama(tmp_path / "m", 11, kv_heads=2, layers=LAYERS, vocab=40,
                             qk_gain=10.0, lm_head_gain=4.0, max_positions=256)
    prompts = [torch.randint(0, 40, (PROMPT,), generator=torch.Generator().manual_seed(s))
               .tolist() for s in (1, 2)]
    first, second = (_run(folder, p) for p in prompts)
    # the prompts lead to different selections (revealed in this debug mode only)
    records = [[r for r in run[CLIENT]["selections"] if r["clusters"] is not None]
               for run in (first, second)]
    assert len(records[0]) == len(records[1]) == (NEW_TOKENS - 1) * LAYERS  # decode layers
    for a, b in zip(*records, strict=True):
        assert (a["step"], a["layer"]) == (b["step"], b["layer"])
        assert a["clusters"].shape == b["clusters"].shape and a["clusters"].shape[-1] > 0
    assert any(not torch.equal(a["clusters"], b["clusters"])
               for a, b in zip(*records, strict=True))
    # every party: bytes and rounds per phase and per operator within each phase, the
    # dealer's requests included, are the same
    for rank, (a, b) in enumerate(zip(first, second, strict=True)):
        assert _without_seconds(a["cost"]) == _without_seconds(b["cost"]), rank
        assert a["cost"]["operators"]["topk"]["bytes"] > 0
    assert first[0]["cost"]["operators"]["dealer"]["bytes"] > 0  # party 0 hears the TTP
    assert_same_transcript(*(_summary(run) for run in (first, second)))


def _summary(outputs: list[dict]) -> dict:
    from crypten_mpcache.private import cost_summary

    return cost_summary([o["cost"] for o in outputs])
