"""Compare-and-select in one round: DCF keys with the mask in their payload.

``dcf_comparison.negative_part`` gives shares of z = [x < 0] and of z x from ONE opening
(``primitives.select`` builds max, ReLU and the tournament's levels on it). Checked: the
two-word DCF against its definition; the algebra in plaintext on the ring's edges; the
dealer's width-2 batches across batch boundaries; under MPC (TTP on demand and ahead,
TFP; 2 and 3 parties) z and min(x, 0) equal plaintext exactly with one online opening;
a transcript that does not depend on the values; a tournament whose levels cost one
round each under ``dcf`` and two under ``masked``, with the same max and argmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.offline import deal_ahead
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.dcf_dealer import (
    BITS,
    LOW,
    Layout,
    batches,
    draw_free,
    draw_mask,
    keys_for,
    low_bits,
    pack_cw,
    ttp_party0_share,
    unpack_key,
)

EDGES = [0, 1, -1, 2 ** 40, -2 ** 40, 2 ** 40 + 1, -2 ** 40 - 1, 2 ** 62, -2 ** 62,
         2 ** 63 - 1, -2 ** 63, -2 ** 63 + 1, 2 ** 63 - 2]


def _values(count: int = 200, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(-2 ** 63, 2 ** 63 - 1, (count,), generator=g, dtype=torch.long)
    return torch.cat([torch.tensor(EDGES, dtype=torch.long), rand])


def _bounded_values(bits: int, count: int = 100, seed: int = 4) -> torch.Tensor:
    """The edges of [-2^bits, 2^bits) (raw units) and random values inside it."""
    edges = [-2 ** bits, -2 ** bits + 1, -1, 0, 1, 2 ** bits - 1, 2 ** bits - 2]
    rand = torch.randint(-2 ** bits, 2 ** bits, (count,),
                         generator=torch.Generator().manual_seed(seed), dtype=torch.long)
    return torch.cat([torch.tensor(edges, dtype=torch.long), rand])


def _words(n: int, seed: int) -> torch.Tensor:
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (n,), generator=torch.Generator().manual_seed(
        seed), dtype=torch.long)


def test_a_two_word_payload_is_selected_whole_by_one_comparison():
    bits = 5
    n = 2 ** bits
    alpha = np.repeat(np.arange(n, dtype=np.uint64), n)
    x = np.tile(np.arange(n, dtype=np.uint64), n)
    beta = np.random.default_rng(1).integers(0, 2 ** 64, size=(n * n, 2), dtype=np.uint64,
                                             endpoint=False)
    k0, k1 = dcf.gen(alpha, beta, bits)
    got = dcf.evaluate(k0, x) + dcf.evaluate(k1, x)
    assert got.shape == (n * n, 2)
    assert np.array_equal(got, np.where((x < alpha)[:, None], beta, np.uint64(0)))
    # per level one more value word than a one-word key
    assert k0.nbytes() - dcf.gen(alpha, beta[:, 0], bits)[0].nbytes() == n * n * 8 * (bits + 1)
    with pytest.raises(ValueError, match="beta must have shape"):
        dcf.gen(alpha, np.zeros((n * n, 3), np.uint64), bits)


def _reconstruct(x: torch.Tensor, r: torch.Tensor, key0: dcf.DCFKey, offsets: torch.Tensor,
                 seeds: tuple[torch.Tensor, torch.Tensor], r_split: torch.Tensor,
                 bits: int = BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Two parties in plaintext: (z, z x) from the opened c, keys, offsets, mask shares."""
    n = x.numel()
    layout = Layout(n, 2, bits)
    keys = [unpack_key(layout, p, seeds[p], pack_cw(key0)) for p in (0, 1)]
    offset_shares = [offsets - _words(2 * n, 30), _words(2 * n, 30)]
    mask_shares = [r - r_split, r_split]
    c = x + r
    low = c.numpy().view(np.uint64) & np.uint64(low_bits(bits))
    top = ((c >> bits) & 1).bool()
    z_total = torch.zeros(n, dtype=torch.long)
    product_total = torch.zeros(n, dtype=torch.long)
    for p in (0, 1):
        w = offset_shares[p].reshape(2, n) + torch.from_numpy(
            dcf.evaluate(keys[p], low).view(np.int64).T.copy())
        z = torch.where(top, (1 if p == 0 else 0) - w[0], w[0])
        z_r = torch.where(top, mask_shares[p] - w[1], w[1])
        z_total += z
        product_total += z * c - z_r
    return z_total, product_total


@pytest.mark.parametrize("mask_seed", [0, 1])
def test_the_algebra_gives_the_sign_and_the_negative_part_on_the_ring_edges(mask_seed):
    x = _values()
    n = x.numel()
    r, seeds = _words(n, mask_seed), (_words(2 * n, 10 + mask_seed), _words(2 * n, 20))
    key0, offsets = keys_for(r, seeds, 2)
    z, product = _reconstruct(x, r, key0, offsets, seeds, _words(n, 40))
    assert z.tolist() == (x < 0).long().tolist()
    assert product.tolist() == torch.where(x < 0, x, torch.zeros_like(x)).tolist()


@pytest.mark.parametrize("bits", [1, 8, 30, 47])
def test_narrow_keys_give_the_sign_and_the_negative_part_inside_their_bound(bits):
    """x in [-2^bits, 2^bits) (raw): keys over ``bits`` levels are exact on the bound's
    edges, with a FULL-ring mask (so z x is exact in the ring), in bits/63 of the bytes."""
    x = _bounded_values(bits)
    n = x.numel()
    r, seeds = _words(n, 3), (_words(2 * n, 13), _words(2 * n, 23))
    key0, offsets = keys_for(r, seeds, 2, bits)
    assert key0.bits == bits
    z, product = _reconstruct(x, r, key0, offsets, seeds, _words(n, 43), bits)
    assert z.tolist() == (x < 0).long().tolist()
    assert product.tolist() == torch.where(x < 0, x, torch.zeros_like(x)).tolist()
    narrow, full = Layout(1000, 2, bits).cw_words, Layout(1000, 2).cw_words
    assert narrow / full < (bits + 1) / BITS
    beyond = torch.tensor([2 ** bits, -2 ** bits - 1])   # outside: the sign is lost
    key0, offsets = keys_for(r[:2], (seeds[0][:4], seeds[1][:4]), 2, bits)
    z, _ = _reconstruct(beyond, r[:2], key0, offsets, (seeds[0][:4], seeds[1][:4]),
                        _words(2, 43), bits)
    assert z.tolist() == [1, 0]


@pytest.mark.parametrize("parties", [2, 3])
def test_the_dealer_deals_width_two_batches_from_the_parties_draws(parties):
    x = _values(60)
    n, batch = x.numel(), 29
    parties_g = [torch.Generator().manual_seed(5 + p) for p in range(parties)]
    dealer_g = [torch.Generator().manual_seed(5 + p) for p in range(parties)]
    r_shares = [draw_mask(n, g) for g in parties_g]
    c = x + sum(r_shares)
    low = c.numpy().view(np.uint64) & np.uint64(LOW)
    state: dict = {}
    products = []
    for start, count in batches(n, batch):
        layout = Layout(count, 2)
        free = [draw_free(layout, g) for g in parties_g]
        dealt = ttp_party0_share(state, dealer_g, n, start, count, 2)
        assert dealt.numel() == layout.party0_words
        cw = dealt[:layout.cw_words]
        w = (dealt[layout.cw_words:] + sum(f[2 * count:] for f in free[1:])).reshape(2, count)
        for p in (0, 1):
            key = unpack_key(layout, p, free[p][:2 * count], cw)
            w = w + torch.from_numpy(dcf.evaluate(key, low[start:start + count])
                                     .view(np.int64).T.copy())
        chunk_c = c[start:start + count]
        r = sum(r_shares)[start:start + count]
        z = torch.where(chunk_c < 0, 1 - w[0], w[0])
        z_r = torch.where(chunk_c < 0, r - w[1], w[1])
        products.append(z * chunk_c - z_r)
    assert torch.cat(products).tolist() == torch.where(x < 0, x, 0 * x).tolist()
    assert state == {}


def _negative_part_party(values: torch.Tensor, bits: int = BITS
                         ) -> tuple[list[int], list[int], dict]:
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.runtime.cost import CostMeter
    from crypten_mpcache.secure.primitives.dcf_comparison import negative_part

    meter = CostMeter()

    def phase() -> tuple[torch.Tensor, torch.Tensor]:
        share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                       size=values.shape, precision=0, src=0)
        bit, low = negative_part(MPCTensor.from_shares(share.share, precision=0), bits)
        return bit._tensor.reveal(), low._tensor.reveal()       # the exact ring elements

    with meter.phase("p"):
        bit, low = deal_ahead("p", phase)
    return bit.long().tolist(), low.long().tolist(), meter.report()["phases"][0]


@pytest.mark.parametrize("dealer,dealing,parties,bits", [
    ("ttp", "on-demand", 2, BITS), ("ttp", "ahead", 3, BITS), ("tfp", "ahead", 2, BITS),
    ("ttp", "ahead", 3, 30), ("tfp", "ahead", 2, 30)])
def test_negative_part_equals_plaintext_with_one_opening(dealer, dealing, parties, bits):
    values = _values(100) if bits == BITS else _bounded_values(bits)
    config = LaunchConfig(dealer=dealer, dealing=dealing, parties=parties, comparison="dcf",
                          timeout_s=300, dcf_batch=64)
    outputs = launch(_negative_part_party, values, bits, config=config)
    bits, lows, cost = outputs[1]
    assert bits == (values < 0).long().tolist()
    expected = torch.where(values < 0, values, 0 * values).tolist()
    assert lows == expected
    # the one opening, then the two reveals (sharing from src 0 is local: zero shares)
    assert cost["rounds"] - cost["dealer_rounds"] == 3


def test_negative_part_transcript_does_not_depend_on_the_values():
    config = LaunchConfig(dealer="ttp", comparison="dcf", timeout_s=300, dcf_batch=64)
    first = launch(_negative_part_party, _values(50), config=config)
    second = launch(_negative_part_party, -_values(50, seed=9) + 5, config=config)
    keys = ("bytes", "rounds", "dealer_bytes", "dealer_rounds")
    for a, b in zip(first, second, strict=True):
        assert {k: a[2][k] for k in keys} == {k: b[2][k] for k in keys}


def _tournament_party(scores: torch.Tensor) -> tuple[list[float], list[list[float]], dict]:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter
    from crypten_mpcache.secure.functions.tournament import tournament_argmax

    meter = CostMeter()
    x = crypten.cryptensor(scores, src=0)
    with meter.phase("p"):
        best, onehot = deal_ahead("p", lambda: tournament_argmax(x))
    phase = meter.report()["phases"][0]
    return best.get_plain_text().tolist(), onehot.get_plain_text().tolist(), phase


# masked: the comparison's 5 rounds (63 bits: no bound given; open, 3 tree levels of 4,
# the daBit) and no select product (9 with binary merges and a product)
@pytest.mark.parametrize("comparison,rounds_per_level", [("dcf", 1), ("masked", 5)])
def test_a_tournament_level_is_one_round_when_the_select_fuses(comparison, rounds_per_level):
    scores = torch.tensor([[0.5, 3.25, -1.0, 3.25, 2.0, -7.5, 0.0, 1.0],
                           [-2.0, -2.0, -2.0, -2.0, -3.0, -1.5, -4.0, -1.5]])
    config = LaunchConfig(dealer="ttp", comparison=comparison, timeout_s=300)
    best, onehot, phase = launch(_tournament_party, scores, config=config)[0]
    assert best == [[3.25], [-1.5]]
    assert onehot == [[0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0]]  # lowest index
    levels, walk_back = 3, 2      # the one-hot walks back down one product per level but 1
    assert phase["rounds"] - phase["dealer_rounds"] == levels * rounds_per_level + walk_back
