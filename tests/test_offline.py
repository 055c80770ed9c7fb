"""Dealing ahead (``runtime.offline``): the store's checks, and whole runs with the TTP.

What is checked: material is served in the dealt order, each piece once; a request other
than the one dealt, one more than dealt, or one fewer used is one error naming the phase
and the request; a large phase comes in chunks, fetched when the store runs dry. End to
end: private tokens equal plaintext greedy with 2 and 3 parties, each decode step waits on
the dealer for exactly two messages and its online transcript is that of on-demand
dealing; the transcript does not depend on the prompt; a dry run that diverges from the
real run, and a dealer that dies while dealing, end the run with one clear error.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime import dealer as dealer_process
from crypten_mpcache.runtime.launcher import LaunchConfig, PartyError, launch
from crypten_mpcache.runtime.offline import (
    DealtMaterialError,
    MaterialStore,
    OfflineConfig,
    deal_ahead,
)
from crypten_mpcache.runtime.trace import DealtRequest
from crypten_mpcache.testing import assert_same_transcript, save_tiny_llama

PROMPT = [3, 14, 15, 9, 26, 5, 35]


def _request(name: str, n: int) -> DealtRequest:
    return DealtRequest(name, None, (torch.Size([n]),), {}, (n,))


class _FakeDealer:
    """Deals chunk after chunk: request i of the phase gets the values 1000 i + (0..n)."""

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.dealt = 0

    def __call__(self, requests) -> torch.Tensor:
        self.chunks.append(len(requests))
        parts = [1000 * (self.dealt + i) + torch.arange(r.numel)
                 for i, r in enumerate(requests)]
        self.dealt += len(requests)
        return torch.cat(parts)


def _store(requests, chunk_bytes: int = 1 << 20) -> tuple[MaterialStore, _FakeDealer]:
    fetch = _FakeDealer()
    store = MaterialStore("decode/1", requests, chunk_bytes, fetch)
    store.fetch_next()
    return store, fetch


def test_material_is_served_in_the_dealt_order_and_each_piece_once():
    requests = [_request("square", 3), _request("square", 3), _request("wraps", 2)]
    store, _ = _store(requests)
    first, second = store.take(requests[0]), store.take(requests[1])
    assert first.tolist() == [0, 1, 2] and second.tolist() == [1000, 1001, 1002]
    assert store.take(requests[2]).tolist() == [2000, 2001]
    with pytest.raises(DealtMaterialError, match=r"phase 'decode/1': request #3 square.*"
                                                 r"was not dealt \(the phase was dealt 3"):
        store.take(requests[0])
    store.finish()


def test_a_request_other_than_the_dealt_one_is_an_error_naming_both():
    store, _ = _store([_request("square", 3), _request("wraps", 2)])
    store.take(_request("square", 3))
    with pytest.raises(DealtMaterialError, match=r"request #1 is B2A\(torch.Size\(\[2\]\)\) "
                                                 r"-> \(2,\), but the dealer dealt wraps"):
        store.take(_request("B2A", 2))
    with pytest.raises(DealtMaterialError, match="request #1 is wraps.* -> \\(5,\\)"):
        store.take(DealtRequest("wraps", None, (torch.Size([2]),), {}, (5,)))  # other size


def test_material_left_unused_is_an_error():
    store, _ = _store([_request("square", 3), _request("wraps", 2)])
    store.take(_request("square", 3))
    with pytest.raises(DealtMaterialError, match="used 1 of the 2 requests"):
        store.finish()


def test_a_large_phase_comes_in_chunks_fetched_when_the_store_runs_dry():
    requests = [_request("square", 40_000) for _ in range(7)]   # 320 kB each
    store, fetch = _store(requests, chunk_bytes=1 << 20)        # 3 per MiB
    assert store.chunks == 3 and fetch.chunks == [3]
    served = [store.take(r)[0].item() for r in requests]
    assert served == [1000 * i for i in range(7)] and fetch.chunks == [3, 3, 1]
    store.finish()


def test_offline_config_is_validated():
    with pytest.raises(ValueError, match="dealing must be one of"):
        OfflineConfig(dealing="later")
    with pytest.raises(ValueError, match="chunk_bytes"):
        OfflineConfig(chunk_bytes=10)
    with pytest.raises(ValueError, match="dealing must be one of"):
        LaunchConfig(dealing="sometimes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("offline"), 1, kv_heads=2, tie=True,
                           max_positions=24, lm_head_gain=4.0)


def _generate(folder: str, prompt=PROMPT, **knobs):
    config = PrivateGenerationConfig(max_new_tokens=3, model_path=folder, dealer="ttp",
                                     progress=False, **knobs)
    return generate_ids(prompt, config)


@pytest.mark.parametrize("parties", [2, 3])
def test_dealt_ahead_each_step_waits_on_the_dealer_twice_and_tokens_match(tiny, parties):
    ahead = _generate(tiny, check=True, parties=parties)
    on_demand = _generate(tiny, check=True, parties=parties, dealing="on-demand")
    assert ahead.match and ahead.generated_ids == on_demand.generated_ids
    assert ahead.dealing == "ahead" and on_demand.dealing == "on-demand"
    for phase_ahead, phase_on_demand in zip(ahead.cost["decode"], on_demand.cost["decode"],
                                            strict=True):
        assert phase_ahead["dealer_rounds"] == 2                    # the plan out, material in
        assert phase_on_demand["dealer_rounds"] > 100
        online = phase_ahead["rounds"] - phase_ahead["dealer_rounds"]
        assert online == phase_on_demand["rounds"] - phase_on_demand["dealer_rounds"]
        assert phase_ahead["bytes"] - phase_ahead["dealer_bytes"] == \
            phase_on_demand["bytes"] - phase_on_demand["dealer_bytes"]
    for phase in ("setup", "prefill"):
        assert ahead.cost[phase]["dealer_rounds"] == 2


def test_dealt_ahead_transcript_does_not_depend_on_the_prompt(tiny):
    first = _generate(tiny)
    second = _generate(tiny, prompt=[39, 7, 7, 20, 11, 2, 1])
    assert_same_transcript(first.cost, second.cost)
    for a, b in zip(first.cost["decode"], second.cost["decode"], strict=True):
        assert (a["dealer_bytes"], a["dealer_rounds"]) == (b["dealer_bytes"], b["dealer_rounds"])


def _diverging_party() -> int:
    """A phase that asks for other material in its real run than in its dry run."""
    import crypten

    parent = os.getpid()

    def phase() -> None:
        n = 3 if os.getpid() == parent else 4   # the dry run runs in a fork
        x = crypten.cryptensor(torch.ones(n))
        (x * x).get_plain_text()

    deal_ahead("decode/7", phase)
    return 0


def test_a_phase_that_diverges_from_its_dry_run_is_one_clear_error():
    with pytest.raises(PartyError, match=r"party 0 \(model owner\) failed: \S*DealtMaterialError: "
                                          r"phase 'decode/7': request #0 is additive\(torch.Size"
                                          r"\(\[3\]\).*but the dealer dealt additive\(torch.Size"
                                          r"\(\[4\]\)"):
        launch(_diverging_party, config=LaunchConfig(dealer="ttp", timeout_s=120))


def _two_phases() -> int:
    import crypten

    for step in range(2):
        x = crypten.cryptensor(torch.ones(5))
        deal_ahead(f"decode/{step}", lambda x=x: (x * x).get_plain_text())
    return 0


def test_a_dealer_that_dies_while_dealing_ends_the_run_naming_it(monkeypatch):
    calls = []

    def dying(server, requests):
        calls.append(len(requests))
        if len(calls) == 2:   # the second phase: the dealer dies while dealing it
            os._exit(3)
        return original(server, requests)

    original = dealer_process.deal_phase
    monkeypatch.setattr(dealer_process, "deal_phase", dying)   # the forked dealer inherits it
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"dealer \(TTP\) \(exit code 3\) died"):
        launch(_two_phases, config=LaunchConfig(dealer="ttp", timeout_s=120))
    assert time.monotonic() - start < 30


def _printing_party() -> int:
    import crypten

    x = crypten.cryptensor(torch.ones(2))

    def phase() -> None:
        print("the phase ran", flush=True)
        (x * x).get_plain_text()

    deal_ahead("decode/0", phase)
    return 0


def test_the_dry_run_writes_nothing_to_the_terminal(capfd):
    launch(_printing_party, config=LaunchConfig(dealer="ttp", timeout_s=120))
    out, _ = capfd.readouterr()
    assert out.count("the phase ran") == 2   # once per party: party 0's dry run is silent
