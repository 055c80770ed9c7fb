"""The dealt one-hot of a small secret integer (``secure.primitives.onehot``): exact for every
value, one round, a transcript that depends on (n, W) only, with both dealers."""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.primitives import onehot as oh


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
    full = oh.onehot(v, width)
    out["cost"] = (c.comm_bytes - b0, c.comm_rounds - r0)
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


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_onehot_is_exact_for_every_value_in_one_round(dealer: str) -> None:
    width = 16
    result = launch(_job, width, config=LaunchConfig(parties=2, dealer=dealer))[0]
    values = result["values"]
    expected = torch.nn.functional.one_hot(values, width).float()
    assert torch.equal(result["full"], expected)
    assert torch.equal(result["first3"], expected.reshape(3, width, width)[..., :3])
    assert result["cost"] == result["other_cost"]                # depends on (n, W) only
    online_rounds = 1
    assert result["cost"][1] == online_rounds + (3 if dealer == "ttp" else 0)


def test_ttp_deal_replays_the_parties_draws() -> None:
    """Party 0's dealt share plus the other parties' generator draws is e_(R mod W)."""
    n, width = 40, 8
    layout = oh.Layout(n, width)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    party0 = oh.ttp_party0_share(generators, n, width)
    replay = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    r = torch.zeros(n, dtype=torch.long)
    u = party0.clone()
    for rank, generator in enumerate(replay):
        r += oh.draw_free(layout, generator)
        if rank > 0:
            u += oh.draw_dependent(layout, generator)
    assert torch.equal(u, oh.unit_vectors(r, width))
    assert torch.equal(u.sum(-1), torch.ones(n, dtype=torch.long))


def test_widths_are_powers_of_two() -> None:
    assert [oh.width_for(c) for c in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]
    with pytest.raises(ValueError, match="power of two"):
        oh.Layout(4, 12)
    with pytest.raises(ValueError, match="count"):
        oh.width_for(0)


def _together_party(comparison_first: bool = False) -> dict:
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
                return open_together(onehot_pending(v, 8), signs)
            return open_together(onehot_pending(v, 8), less_than_zero_pending(x, 4))

        bits, signs = deal_ahead("p", run)
    phase = meter.report()["phases"][0]
    return {"bits": bits.get_plain_text(), "signs": signs.get_plain_text(),
            "rounds": phase["rounds"] - phase["dealer_rounds"]}


# masked: the shared opening, the tree over 20 bits (2 levels), the daBit
@pytest.mark.parametrize("comparison,rounds", [("dcf", 1), ("masked", 1 + 2 + 1)])
@pytest.mark.parametrize("comparison_first", [False, True])
def test_a_onehot_opens_beside_a_comparison(comparison: str, rounds: int,
                                            comparison_first: bool) -> None:
    """The one-hot's index and the comparison's masked input share one opening (both
    results exact, whichever is dealt first: the TTP replays the parties' draws in
    order); the masked comparison's tree and daBit follow."""
    config = LaunchConfig(dealer="ttp", comparison=comparison, timeout_s=300)
    out = launch(_together_party, comparison_first, config=config)[0]
    assert out["bits"].tolist() == torch.nn.functional.one_hot(
        torch.tensor([3, 0, 7]), 8).tolist()
    assert out["signs"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out["rounds"] == rounds
