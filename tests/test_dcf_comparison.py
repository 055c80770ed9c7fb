"""The one-round comparison from dealt DCF keys (``secure.primitives.dcf_comparison``).

Checked: the protocol's algebra in plaintext on the ring's edges (msb(x) from the opened
c = x + r, the dealer's keys and offset shares); the keys' correction words survive
packing; under MPC, [x < 0] equals plaintext at full width on edge and random values
with the TTP (on demand and dealt ahead) and TFP, 2 and 3 parties; one opening per
comparison; a transcript that does not depend on the values; a private generation with
``--comparison dcf`` gives plaintext greedy's tokens.

Bounded batches: a comparison of n elements is dealt and evaluated in ceil(n / dcf_batch)
requests of at most ``dcf_batch`` elements each (party 0's dry run records exactly
those), with the default bound and a small one, and still opens c = x + r in ONE round;
results equal plaintext across batch boundaries; the dealer refuses a batch that does not
continue the comparison it is dealing; a bound whose batch would not fit in a dealt chunk
is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.bench.runner import BenchConfig, run_bench
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.offline import OfflineConfig, deal_ahead
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.dcf_dealer import (
    BITS,
    LOW,
    Layout,
    batches,
    checked_batch,
    draw_free,
    draw_mask,
    keys_for,
    pack_cw,
    ttp_party0_share,
    unpack_key,
)
from crypten_mpcache.secure.primitives.party import provider_name
from crypten_mpcache.testing import save_tiny_llama

EDGES = [0, 1, -1, 2 ** 40, -2 ** 40, 2 ** 40 + 1, -2 ** 40 - 1, 2 ** 62, -2 ** 62,
         2 ** 63 - 1, -2 ** 63, -2 ** 63 + 1, 2 ** 63 - 2]


def _values(count: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    rand = torch.randint(-2 ** 63, 2 ** 63 - 1, (count,), generator=g, dtype=torch.long)
    return torch.cat([torch.tensor(EDGES, dtype=torch.long), rand])


def _words(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (n,), generator=g, dtype=torch.long)


@pytest.mark.parametrize("mask_seed", [0, 1])
def test_the_protocol_algebra_gives_the_sign_bit_on_the_ring_edges(mask_seed):
    """Two parties in plaintext: c = x + r opened; z = offsets + DCF; msb = a ? 1 - z : z."""
    x = _values(200)
    n = x.numel()
    r, seeds = _words(n, mask_seed), (_words(2 * n, 10 + mask_seed), _words(2 * n, 20))
    key0, b = keys_for(r, seeds)
    layout = Layout(n)
    cw = pack_cw(key0)
    assert cw.numel() == layout.cw_words
    keys = [unpack_key(layout, party, seeds[party], cw) for party in (0, 1)]
    offsets = [b - _words(n, 30), _words(n, 30)]                     # shares of b
    c = x + r                                                         # wraps mod 2^64
    low = c.numpy().view(np.uint64) & np.uint64(LOW)
    z = [offsets[p] + torch.from_numpy(dcf.evaluate(keys[p], low).view(np.int64))
         for p in (0, 1)]
    a = c < 0
    bits = torch.where(a, 1 - z[0], z[0]) + torch.where(a, -z[1], z[1])
    assert bits.tolist() == (x < 0).long().tolist()


def _ltz_party(values: torch.Tensor) -> tuple[list[int], dict]:
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.runtime.cost import CostMeter

    meter = CostMeter()

    def phase() -> torch.Tensor:
        share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                       size=values.shape, precision=0, src=0)
        return MPCTensor.from_shares(share.share, precision=0)._ltz().get_plain_text()

    with meter.phase("p"):
        out = deal_ahead("p", phase)
    return out.long().tolist(), meter.report()["phases"][0]


@pytest.mark.parametrize("dealer,dealing,parties", [
    ("ttp", "on-demand", 2), ("ttp", "ahead", 3), ("tfp", "ahead", 2)])
def test_less_than_zero_equals_plaintext_at_full_width(dealer, dealing, parties):
    values = _values()
    config = LaunchConfig(dealer=dealer, dealing=dealing, parties=parties, comparison="dcf",
                          timeout_s=300)
    outputs = launch(_ltz_party, values, config=config)
    assert outputs[0][0] == (values < 0).long().tolist()
    cost = outputs[1][1]
    online_rounds = cost["rounds"] - cost["dealer_rounds"]
    assert online_rounds == 2          # sharing x (src=0), then the one opening, then reveal
    if dealer == "ttp" and dealing == "ahead":
        assert cost["dealer_rounds"] == 2            # party 1: the relayed correction words


def test_the_transcript_does_not_depend_on_the_values():
    config = LaunchConfig(dealer="ttp", comparison="dcf", timeout_s=300, dcf_batch=64)
    first = launch(_ltz_party, _values(), config=config)
    second = launch(_ltz_party, -_values() + 5, config=config)
    for a, b in zip(first, second, strict=True):
        assert {k: a[1][k] for k in ("bytes", "rounds", "dealer_bytes", "dealer_rounds")} == \
            {k: b[1][k] for k in ("bytes", "rounds", "dealer_bytes", "dealer_rounds")}


def test_batches_cover_the_elements_once_in_order_and_bounded():
    assert batches(0, 4) == []
    assert batches(3, 4) == [(0, 3)]
    assert batches(8, 4) == [(0, 4), (4, 4)]
    assert batches(9, 4) == [(0, 4), (4, 4), (8, 1)]


def test_the_batch_bound_is_validated_against_the_dealt_chunk():
    assert OfflineConfig().dcf_batch == 1 << 14
    assert 8 * Layout(OfflineConfig().dcf_batch, 2).party0_words <= 40 << 20   # tens of MiB
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dcf_batch must be a positive int"):
            OfflineConfig(dcf_batch=bad)
    with pytest.raises(ValueError, match="more than chunk_bytes"):
        checked_batch(OfflineConfig(chunk_bytes=1 << 20, dcf_batch=1 << 14))
    assert checked_batch(OfflineConfig(chunk_bytes=1 << 20, dcf_batch=256)) == 256  # 0.5 MB
    with pytest.raises(ValueError, match="more than chunk_bytes"):     # the widest payload
        checked_batch(OfflineConfig(chunk_bytes=1 << 20, dcf_batch=512))  # 1.06 MB
    with pytest.raises(ValueError, match="more than chunk_bytes"):
        LaunchConfig(comparison="dcf", dcf_batch=1 << 20)               # 1.5 GiB > 256 MiB
    with pytest.raises(ValueError, match="dcf_batch must be a positive int"):
        LaunchConfig(comparison="dcf", dcf_batch=0)


def _generators(parties: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + p) for p in range(parties)]


@pytest.mark.parametrize("parties", [2, 3])
def test_the_dealer_deals_a_comparison_batch_by_batch_from_the_parties_draws(parties):
    """The TTP's side in plaintext: every party draws its mask share for all n, then a
    root seed and offset share per batch; the dealer's batches (replaying those draws)
    give keys whose evaluations at c = x + r make [x < 0], across batch boundaries."""
    x = _values(100)
    n, batch = x.numel(), 37
    parties_g, dealer_g = _generators(parties, 5), _generators(parties, 5)
    r_shares = [draw_mask(n, g) for g in parties_g]
    c = x + sum(r_shares)                                                 # the opening
    low = c.numpy().view(np.uint64) & np.uint64(LOW)
    state: dict = {}
    bits = []
    for start, count in batches(n, batch):
        layout = Layout(count)
        free = [draw_free(layout, g) for g in parties_g]
        dealt = ttp_party0_share(state, dealer_g, n, start, count)
        assert dealt.numel() == layout.party0_words
        cw = dealt[:layout.cw_words]
        z = dealt[layout.cw_words:] + sum(f[2 * count:] for f in free[1:])
        for p in (0, 1):
            key = unpack_key(layout, p, free[p][:2 * count], cw)
            z = z + torch.from_numpy(dcf.evaluate(key, low[start:start + count]).view(np.int64))
        bits.append(torch.where(c[start:start + count] < 0, 1 - z, z))
    assert torch.cat(bits).tolist() == (x < 0).long().tolist()
    assert state == {}                                   # the mask is dropped at the end


def test_the_dealer_refuses_a_batch_that_does_not_continue_its_comparison():
    state: dict = {}
    generators = _generators(2, 0)
    for g in generators:
        draw_mask(10, g)
    ttp_party0_share(state, generators, 10, 0, 4)
    with pytest.raises(ValueError, match=r"dcf_material\(10, 5, 4, 1, 63\) does not continue"):
        ttp_party0_share(state, generators, 10, 5, 4)                    # skips one
    with pytest.raises(ValueError, match=r"dcf_material\(10, 4, 7, 1, 63\) does not continue"):
        ttp_party0_share(state, generators, 10, 4, 7)                    # past the end
    with pytest.raises(ValueError, match="does not continue"):
        ttp_party0_share({}, generators, 10, 4, 4)                       # none pending


def _ltz_batches_party(values: torch.Tensor) -> tuple[list[int], dict, list]:
    """[x < 0] of ``values``, its costs and (party 0) the dealer requests its dry run
    records: (name, args, size) per request."""
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.runtime import trace
    from crypten_mpcache.runtime.cost import CostMeter

    meter = CostMeter()

    def phase() -> torch.Tensor:
        share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                       size=values.shape, precision=0, src=0)
        return MPCTensor.from_shares(share.share, precision=0)._ltz().get_plain_text()

    requests = []
    if comm.get().get_rank() == 0 and provider_name() == "TTP":
        requests = [(r.name, r.args, r.size) for r in trace.requests_of(phase, 300)]
    with meter.phase("p"):
        out = deal_ahead("p", phase)
    return out.long().tolist(), meter.report()["phases"][0], requests


def _check_batched(outputs, values, batch: int, dealer: str, dealing: str) -> None:
    n = values.numel()
    expected = [(start, min(batch, n - start)) for start in range(0, n, batch)]
    assert len(expected) > 2 and expected[-1][1] < batch             # a ragged last batch
    for bits, _, _ in outputs:
        assert bits == (values < 0).long().tolist()
    for _, cost, _ in outputs:                        # ONE opening for all n elements
        assert cost["rounds"] - cost["dealer_rounds"] == 2       # + the reveal
    if dealer != "ttp":            # TFP: party 0 sends party 1 its keys once per batch
        assert [cost["dealer_rounds"] for _, cost, _ in outputs] == [len(expected)] * 2
        return
    requests = outputs[0][2]
    assert [(name, args) for name, args, _ in requests] == \
        [("dcf_material", (n, start, count, 1, BITS)) for start, count in expected]
    bound = Layout(batch).party0_words
    assert all(size[0] <= bound for *_, size in requests)
    relayed_rounds = outputs[1][1]["dealer_rounds"]   # party 1: size, words per message
    assert relayed_rounds == (2 * len(expected) if dealing == "on-demand" else 2)


@pytest.mark.parametrize("dealer,dealing,parties", [
    ("ttp", "ahead", 3), ("ttp", "on-demand", 2), ("tfp", "ahead", 2)])
def test_a_large_comparison_is_dealt_in_bounded_batches_and_opened_once(dealer, dealing,
                                                                        parties):
    values = _values(1000)                                   # 1,013 elements, batches of 96
    config = LaunchConfig(dealer=dealer, dealing=dealing, parties=parties, comparison="dcf",
                          timeout_s=300, dcf_batch=96)
    _check_batched(launch(_ltz_batches_party, values, config=config), values, 96, dealer,
                   dealing)


def test_the_default_bound_splits_a_comparison_beyond_it():
    values = torch.cat([_values(), _words(2 * OfflineConfig().dcf_batch + 1000, 3)])
    config = LaunchConfig(dealer="ttp", comparison="dcf", timeout_s=600)
    _check_batched(launch(_ltz_batches_party, values, config=config), values,
                   OfflineConfig().dcf_batch, "ttp", "ahead")


def test_an_mpcache_decode_step_runs_its_secure_top_k_on_dcf_comparisons():
    """The top-k protocol chooser has the dcf comparison's unit costs; at 512 tokens and a
    20% budget MPCache's decode step runs a secure top-k (tests/test_bench.py)."""
    config = BenchConfig(shape="tiny", layers=1, contexts=(512,), caches=("mpcache",),
                         dealer="ttp", comparison="dcf", steps=1, budget=0.2)
    row = run_bench(config).as_dict()["rows"][0]
    assert row["comparison"] == "dcf" and row["topk_last_step"]
    assert row["attended_max"] <= int(0.2 * 513) + 1
    assert row["online_rounds"] < 100


def test_private_generation_with_dcf_comparisons_matches_plaintext(tmp_path):
    folder = save_tiny_llama(tmp_path / "m", 1, kv_heads=2, tie=True, max_positions=24,
                             lm_head_gain=4.0)
    config = PrivateGenerationConfig(max_new_tokens=3, model_path=folder, dealer="ttp",
                                     comparison="dcf", check=True, progress=False)
    result = generate_ids([3, 14, 15, 9, 26, 5, 35], config)
    assert result.match, (result.generated_ids, result.plaintext_ids)
