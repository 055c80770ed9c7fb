"""The one-round comparison from dealt DCF keys (``secure.primitives.dcf_comparison``).

Checked: the protocol's algebra in plaintext on the ring's edges (msb(x) from the opened
c = x + r, the dealer's keys and offset shares); the keys' correction words survive
packing; under MPC, [x < 0] equals plaintext at full width on edge and random values
with the TTP (on demand and dealt ahead) and TFP, 2 and 3 parties; one opening per
comparison; a transcript that does not depend on the values; a private generation with
``--comparison dcf`` gives plaintext greedy's tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.private import PrivateGenerationConfig, generate_ids
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.offline import deal_ahead
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.dcf_comparison import (
    LOW,
    Layout,
    keys_for,
    pack_cw,
    unpack_key,
)
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
    config = LaunchConfig(dealer="ttp", comparison="dcf", timeout_s=300)
    first = launch(_ltz_party, _values(), config=config)
    second = launch(_ltz_party, -_values() + 5, config=config)
    for a, b in zip(first, second, strict=True):
        assert {k: a[1][k] for k in ("bytes", "rounds", "dealer_bytes", "dealer_rounds")} == \
            {k: b[1][k] for k in ("bytes", "rounds", "dealer_bytes", "dealer_rounds")}


def test_private_generation_with_dcf_comparisons_matches_plaintext(tmp_path):
    folder = save_tiny_llama(tmp_path / "m", 1, kv_heads=2, tie=True, max_positions=24,
                             lm_head_gain=4.0)
    config = PrivateGenerationConfig(max_new_tokens=3, model_path=folder, dealer="ttp",
                                     comparison="dcf", check=True, progress=False)
    result = generate_ids([3, 14, 15, 9, 26, 5, 35], config)
    assert result.match, (result.generated_ids, result.plaintext_ids)
