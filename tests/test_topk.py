"""Secure top-k protocols equal torch.topk (set and ascending index order), obliviously."""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.network import LAN, WAN, NetworkProfile
from crypten_mpcache.secure.functions import topk, topk_cost

# the masked comparison: the cost model (topk_cost) prices its rounds
TFP = LaunchConfig(parties=2, dealer="tfp", comparison="masked", timeout_s=300)
CASES = [(8, 2), (13, 5), (16, 4), (20, 10), (32, 8), (7, 7), (5, 1)]


def _reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.topk(scores, k, dim=-1).indices.sort(-1).values
    return torch.nn.functional.one_hot(idx, scores.size(-1)).float()


def _topk_job() -> dict:
    import crypten
    import crypten.communicator as comm

    out = {}
    for g, k in CASES:
        torch.manual_seed(g * 100 + k)
        scores = torch.randn(2, 3, g) * 4                    # distinct with probability 1
        enc = crypten.cryptensor(scores)
        for protocol in topk.PROTOCOLS:
            out[(g, k, protocol)] = (scores, topk.topk_onehot(enc, k, protocol).get_plain_text(),
                                     topk.topk_mask(enc, k, protocol).get_plain_text())
        for protocol in topk.PROTOCOLS:
            c = comm.get()
            b0, r0 = c.comm_bytes, c.comm_rounds
            rows = topk.topk_onehot(enc, k, protocol, ordered=False)
            cost = (c.comm_bytes - b0, c.comm_rounds - r0)
            out[(g, k, protocol, "unordered")] = (rows.get_plain_text(), cost)
            b0, r0 = c.comm_bytes, c.comm_rounds
            topk.topk_onehot(enc, k, protocol)
            out[(g, k, protocol, "ordered cost")] = (c.comm_bytes - b0, c.comm_rounds - r0)
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, 2.0]])
    for protocol in topk.PROTOCOLS:
        out[("ties", protocol)] = topk.topk_onehot(crypten.cryptensor(ties), 2,
                                                   protocol).get_plain_text()
    # obliviousness: same shapes, different secrets -> same bytes and rounds
    for protocol in topk.PROTOCOLS:
        costs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            enc = crypten.cryptensor(torch.randn(16) * (seed + 1))
            c = comm.get()
            b0, r0 = c.comm_bytes, c.comm_rounds
            topk.topk_onehot(enc, 4, protocol)
            costs.append((c.comm_bytes - b0, c.comm_rounds - r0))
        out[("cost", protocol)] = costs
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    return launch(_topk_job, config=TFP)[0]


@pytest.mark.parametrize("protocol", topk.PROTOCOLS)
@pytest.mark.parametrize("g,k", CASES)
def test_equals_torch_topk(results: dict, protocol: str, g: int, k: int) -> None:
    scores, onehot, mask = results[(g, k, protocol)]
    expected = _reference(scores, k)
    assert onehot.shape == (2, 3, k, g)
    assert torch.equal(onehot, expected)
    assert torch.equal(mask, expected.sum(-2))


@pytest.mark.parametrize("protocol", topk.PROTOCOLS)
@pytest.mark.parametrize("g,k", CASES)
def test_unordered_rows_are_the_same_set_in_rank_order(results: dict, protocol: str, g: int,
                                                       k: int) -> None:
    """``ordered=False``: the same selected set; rank and iterative give rows best first
    (torch.topk's order) and the rank protocol saves one comparison round."""
    scores, ordered, _ = results[(g, k, protocol)]
    rows, cost = results[(g, k, protocol, "unordered")]
    assert torch.equal(rows.sum(-2), ordered.sum(-2))              # the same set
    assert torch.equal(rows.sum(-1), torch.ones(2, 3, k))          # one item per row
    if protocol in ("rank", "iterative"):
        best_first = torch.topk(scores, k, dim=-1).indices
        assert torch.equal(rows.argmax(-1), best_first)
        ordered_cost = results[(g, k, protocol, "ordered cost")]
        # one comparison round fewer; with the cheap masked comparison the extra products
        # of the unordered rows may cost a few more bytes
        assert cost[1] < ordered_cost[1] and cost[0] <= 1.1 * ordered_cost[0], \
            (cost, ordered_cost)
        model = topk_cost.TopKConfig(dealer="tfp")
        assert model.estimate(protocol, g, k, ordered=False)[1] < model.estimate(
            protocol, g, k)[1]
    if protocol == "rank":  # one comparison (5 rounds), then one opening (a dealt one-hot)
        assert cost[1] == 5 + 1 == topk_cost.TopKConfig(dealer="tfp").estimate(
            protocol, g, k, ordered=False)[1]


@pytest.mark.parametrize("protocol", topk.PROTOCOLS)
def test_ties_go_to_lower_index(results: dict, protocol: str) -> None:
    onehot = results[("ties", protocol)]
    assert onehot.argmax(-1).tolist() == [[1, 2]]            # the first two of three 3.0s


@pytest.mark.parametrize("protocol", topk.PROTOCOLS)
def test_transcript_independent_of_secrets(results: dict, protocol: str) -> None:
    first, second = results[("cost", protocol)]
    assert first == second


def test_cost_model_choices() -> None:
    config = topk_cost.TopKConfig(dealer="tfp", comparison="crypten")
    masked = topk_cost.TopKConfig(dealer="tfp", comparison="masked")
    # WAN punishes rounds: the constant-round protocol wins at small G
    assert topk_cost.choose_protocol(16, 8, WAN, config) == "rank"
    assert topk_cost.choose_protocol(16, 8, WAN, masked) == "rank"
    # bytes dominate a fast link with many items: rank's G^2 comparisons lose (later
    # with the cheaper masked comparison)
    assert topk_cost.choose_protocol(128, 4, LAN, config, batch=64) != "rank"
    assert topk_cost.choose_protocol(256, 4, LAN, masked, batch=64) != "rank"
    for g, k in [(8, 2), (64, 16), (128, 64)]:
        for protocol in topk.PROTOCOLS:
            b, r = config.estimate(protocol, g, k)
            assert b > 0 and r > 0


def test_cost_model_knows_both_comparisons() -> None:
    crypten_cmp = topk_cost.TopKConfig(dealer="ttp", comparison="crypten")
    masked = topk_cost.TopKConfig(dealer="ttp", comparison="masked")
    for protocol in topk.PROTOCOLS:
        assert masked.estimate(protocol, 64, 8)[0] < crypten_cmp.estimate(protocol, 64, 8)[0]
    with pytest.raises(ValueError, match="no unit costs"):
        topk_cost.TopKConfig(comparison="garbled")


def test_network_profile() -> None:
    assert LAN.latency(1.0, 10, 3e9 / 8) == pytest.approx(1.0 + 10 * 0.8e-3 + 1.0)
    assert WAN.rtt_s == 0.04 and WAN.bandwidth_bps == 200e6
    with pytest.raises(ValueError):
        NetworkProfile("bad", 0, 0.1)
    with pytest.raises(ValueError):
        topk_cost.TopKConfig(protocols=("bogus",))
