"""The dealt one-hot of a small secret integer (``secure.primitives.onehot``): exact for every
value, one round, a transcript that depends on (n, W) only, with both dealers, its unit
vectors dealt as words or (from W = 32) as DPF keys (``onehot_dealer``)."""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.primitives import onehot as oh
from crypten_mpcache.secure.primitives import onehot_dealer as ohd


def _job(width: int) -> dict:
    import crypten
    import crypten.communicator as comm

    values = torch.cat([torch.arange(width), torch.randint(0, width, (2 * width,))])
    v = crypten.mpc.MPCTensor.from_shares(
        crypten.mpc.primitives.ArithmeticSharedTensor(values, precision=0, src=0).share,
        precision=0)
    v.encoder._scale = 1
    out = {"values": values}
    c = comm.get()
    b0, r0 = c.comm_bytes, c.comm_rounds
    d0 = getattr(c, "dealer_bytes", 0)
    full = oh.onehot(v, width)
    out["cost"] = (c.comm_bytes - b0, c.comm_rounds - r0)
    out["dealer_bytes"] = getattr(c, "dealer_bytes", 0) - d0
    out["full"] = full.get_plain_text()
    out["first3"] = oh.onehot(v.reshape(3, width), width, count=3).get_plain_text()
    other = crypten.mpc.MPCTensor.from_shares(
        crypten.mpc.primitives.ArithmeticSharedTensor(values.flip(0), precision=0,
                                                      src=0).share, precision=0)
    other.encoder._scale = 1
    b0, r0 = c.comm_bytes, c.comm_rounds
    oh.onehot(other, width)
    out["other_cost"] = (c.comm_bytes - b0, c.comm_rounds - r0)
    with pytest.raises(ValueError, match="scale-1"):
        oh.onehot(crypten.cryptensor(torch.zeros(3)), width)
    return out


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("dealer,parties", [("tfp", 2), ("ttp", 2), ("ttp", 3), ("tfp", 3)])
def test_onehot_is_exact_for_every_value_in_one_round(dealer: str, parties: int,
                                                      width: int) -> None:
    """Exact for every value at a width dealt as words (16) and as DPF keys (64, TTP; the
    TFP deals words, free of traffic)."""
    result = launch(_job, width, config=LaunchConfig(parties=parties, dealer=dealer))[0]
    values = result["values"]
    expected = torch.nn.functional.one_hot(values, width).float()
    assert torch.equal(result["full"], expected)
    assert torch.equal(result["first3"], expected.reshape(3, width, width)[..., :3])
    assert result["cost"] == result["other_cost"]                # depends on (n, W) only
    online_rounds = 1
    layout = ohd.Layout(3 * width, width)
    assert layout.uses_keys == (width == 64)
    ttp_rounds = 3                    # party 0's request (party 1's relay is not its own)
    assert result["cost"][1] == online_rounds + (ttp_rounds if dealer == "ttp" else 0)
    if dealer == "ttp":
        overhead = result["dealer_bytes"] - 8 * layout.party0_words    # requests, sizes
        assert 0 <= overhead <= 512


def test_ttp_deal_replays_the_parties_draws() -> None:
    """Party 0's dealt share plus the other parties' generator draws is e_(R mod W)."""
    n, width = 40, 8
    layout = ohd.Layout(n, width)
    assert not layout.uses_keys
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    party0 = ohd.ttp_party0_share(generators, n, width)
    replay = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    r = torch.zeros(n, dtype=torch.long)
    u = party0.clone()
    for rank, generator in enumerate(replay):
        r += ohd.draw_free(layout, generator)
        if rank > 0:
            u += ohd.draw_dependent(layout, generator)
    assert torch.equal(u, ohd.unit_vectors(r, width))
    assert torch.equal(u.sum(-1), torch.ones(n, dtype=torch.long))


@pytest.mark.parametrize("width", [32, 128, 8192])
def test_ttp_keys_expand_to_the_unit_vectors(width: int) -> None:
    """The TTP's correction words with the root seeds parties 0 and 1 draw expand to
    shares of e_(R mod W) for the R all three parties draw: the keys' material."""
    n = 40
    layout = ohd.Layout(n, width)
    assert layout.uses_keys and ohd.relay_words(n, width) == layout.cw_words
    generators = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    cw = ohd.ttp_party0_share(generators, n, width)
    assert cw.shape == (layout.cw_words,)
    replay = [torch.Generator().manual_seed(s) for s in (4, 5, 6)]
    free = [ohd.draw_free(layout, g) for g in replay]
    r = sum(f[:n] for f in free)
    u = sum(torch.from_numpy(ohd.dpf.evaluate_all(
        ohd.unpack_key(layout, rank, free[rank][n:], cw)).view("int64"))
        for rank in (0, 1))
    assert torch.equal(u, ohd.unit_vectors(r, width))


def test_the_cheaper_material_is_chosen_by_width() -> None:
    """Words below W = 32, keys from there; keys take ~log2(W) x 2 words an element."""
    assert [ohd.Layout(1000, w).uses_keys for w in (1, 2, 8, 16, 32, 128)] == \
        [False, False, False, False, True, True]
    assert ohd.Layout(1000, 128).dealt_words() < 1000 * 128 / 4


def test_widths_are_powers_of_two() -> None:
    assert [oh.width_for(c) for c in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]
    with pytest.raises(ValueError, match="power of two"):
        ohd.Layout(4, 12)
    with pytest.raises(ValueError, match="count"):
        oh.width_for(0)


def _together_party(comparison_first: bool = False, width: int = 8) -> dict:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter
    from crypten_mpcache.runtime.offline import deal_ahead
    from crypten_mpcache.secure.primitives.onehot import onehot_pending
    from crypten_mpcache.secure.primitives.openings import open_together
    from crypten_mpcache.secure.primitives.select import less_than_zero_pending

    v = crypten.cryptensor(torch.tensor([3.0, 0.0, 7.0]), precision=0)
    x = crypten.cryptensor(torch.tensor([-2.5, 0.0, 4.0, -0.001]))
    meter = CostMeter()
    with meter.phase("p"):
        def run() -> list:
            if comparison_first:   # its material is dealt before the one-hot's
                signs = less_than_zero_pending(x, 4)
                return open_together(onehot_pending(v, width), signs)
            return open_together(onehot_pending(v, width), less_than_zero_pending(x, 4))

        bits, signs = deal_ahead("p", run)
    phase = meter.report()["phases"][0]
    return {"bits": bits.get_plain_text(), "signs": signs.get_plain_text(),
            "rounds": phase["rounds"] - phase["dealer_rounds"]}


# masked: the shared opening, the tree over 20 bits (2 levels), the daBit
@pytest.mark.parametrize("comparison,rounds", [("dcf", 1), ("masked", 1 + 2 + 1)])
@pytest.mark.parametrize("comparison_first", [False, True])
@pytest.mark.parametrize("width", [8, 64])
def test_a_onehot_opens_beside_a_comparison(comparison: str, rounds: int,
                                            comparison_first: bool, width: int) -> None:
    """The one-hot's index and the comparison's masked input share one opening (both
    results exact, whichever is dealt first: the TTP replays the parties' draws in
    order); the masked comparison's tree and daBit follow."""
    config = LaunchConfig(dealer="ttp", comparison=comparison, timeout_s=300)
    out = launch(_together_party, comparison_first, width, config=config)[0]
    assert out["bits"].tolist() == torch.nn.functional.one_hot(
        torch.tensor([3, 0, 7]), width).tolist()
    assert out["signs"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out["rounds"] == rounds
