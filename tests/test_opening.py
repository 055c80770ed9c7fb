"""Openings by one exchange of messages (``runtime.opening``, ``OPENING_PATCH``).

What is checked: with two parties every opening (arithmetic reveal, XOR reveal, Beaver
product, batched) goes through the exchange, never through gloo's all_reduce, and gives
the plaintext; the counted bytes and rounds are those CrypTen counts for its ring (the
transcript does not change); three parties keep the ring and stay correct.
"""

from __future__ import annotations

import crypten
import crypten.communicator as comm
import pytest
import torch
import torch.distributed as dist

import crypten_mpcache  # noqa: F401
from crypten_mpcache.patches import crypten_distributed
from crypten_mpcache.runtime.launcher import LaunchConfig, launch

X = torch.tensor([[1.5, -2.25, 0.0], [1e3, -1e3, 3.0]])
Y = torch.tensor([[-0.5, 4.0, 2.0], [1e-2, 7.0, -3.0]])
WORDS = torch.tensor([[5, -7, 0], [2 ** 40 + 3, -1, 2 ** 62]])  # binary shares: integers


def _openings(exchange: bool) -> dict:
    """Reveal, XOR reveal, a product and a comparison; how often gloo's all_reduce ran,
    and the counted rounds and bytes."""
    if not exchange:
        crypten_distributed.OPENING_PATCH.uninstall()
    ring_calls = []
    ring = dist.all_reduce

    def counted(*args, **kwargs):
        ring_calls.append(1)
        return ring(*args, **kwargs)

    dist.all_reduce = counted
    try:
        comm.get().reset_communication_stats()
        x, y = crypten.cryptensor(X, src=0), crypten.cryptensor(Y, src=1)
        words = x.share.clone()
        binary = crypten.mpc.MPCTensor(WORDS, ptype=crypten.mpc.binary)
        out = {"sum": (x + y).get_plain_text(), "product": (x * y).get_plain_text(),
               "less": (x < y).get_plain_text(), "xor": binary.get_plain_text(),
               "batched": comm.get().all_reduce([words, words[:1]], batched=True)}
        stats = comm.get().get_communication_stats()
    finally:
        dist.all_reduce = ring
    return {**out, "ring_calls": len(ring_calls), "rounds": stats["rounds"],
            "bytes": stats["bytes"]}


def test_two_parties_open_by_exchange_with_crypten_counts():
    config = LaunchConfig(parties=2, dealer="tfp", timeout_s=120)
    exchanged = launch(_openings, True, config=config)
    ringed = launch(_openings, False, config=config)
    for ours, theirs in zip(exchanged, ringed, strict=True):
        assert ours["ring_calls"] == 0  # every opening was an exchange
        assert theirs["ring_calls"] > 0
        assert torch.allclose(ours["sum"], X + Y, atol=1e-3)
        assert torch.allclose(ours["product"], X * Y, rtol=1e-3, atol=1e-2)
        assert torch.equal(ours["less"], (X < Y).float())
        assert torch.equal(ours["xor"], theirs["xor"])
        assert torch.equal(ours["xor"], WORDS)
        for key in ("rounds", "bytes"):  # the transcript CrypTen counts is unchanged
            assert ours[key] == theirs[key], key
    # the batched opening of the same words: both parties hold the opened (summed) words
    assert torch.equal(exchanged[0]["batched"][0], exchanged[1]["batched"][0])
    assert torch.equal(exchanged[0]["batched"][1], exchanged[0]["batched"][0][:1])
    assert torch.equal(exchanged[0]["batched"][0], ringed[0]["batched"][0])


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_three_parties_keep_the_ring(dealer):
    results = launch(_openings, True, config=LaunchConfig(parties=3, dealer=dealer,
                                                          timeout_s=120))
    for result in results:
        assert result["ring_calls"] > 0
        assert torch.allclose(result["product"], X * Y, rtol=1e-3, atol=1e-2)
        assert torch.equal(result["less"], (X < Y).float())
