"""Independent products in one round (``secure.primitives.products``): each equals the
separate CrypTen product (its scaling included), together they cost one round."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, launch


def _products_party() -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.secure.primitives.products import multiply_together

    g = torch.Generator().manual_seed(7)
    x = crypten.cryptensor(torch.randn(3, 5, generator=g) * 20)
    s = crypten.cryptensor(torch.tensor([[0.25], [2.0], [-1.5]]))
    bits = crypten.cryptensor(torch.tensor([[1.0], [0.0], [1.0]]), precision=0)
    y = crypten.cryptensor(torch.randn(4, generator=g))
    pairs = [(x, s), (bits, x), (x, bits), (y, y)]
    before = comm.get().comm_rounds
    together = multiply_together(pairs)
    rounds = comm.get().comm_rounds - before
    before = comm.get().comm_rounds
    separate = [a * b for a, b in pairs]
    separate_rounds = comm.get().comm_rounds - before
    return {"separate_rounds": separate_rounds,
            "together": [(t.get_plain_text(), t.encoder.scale) for t in together],
            "separate": [(t.get_plain_text(), t.encoder.scale) for t in separate],
            "rounds": rounds}


@pytest.mark.parametrize("parties", [2, 3])
def test_products_together_equal_the_separate_ones_in_one_round(parties: int) -> None:
    out = launch(_products_party, config=LaunchConfig(parties=parties, dealer="tfp",
                                                      timeout_s=300))[0]
    for (got, got_scale), (want, want_scale) in zip(out["together"], out["separate"],
                                                    strict=True):
        assert got.shape == want.shape and got_scale == want_scale
        assert (got - want).abs().max() <= 2 ** -14          # truncation: a few ulp
    # 2 parties truncate locally: one round for all four (four apart); 3 parties truncate
    # by CrypTen's protocol, once for the two truncating products
    assert (out["rounds"], out["separate_rounds"]) == ((1, 4) if parties == 2 else (3, 8))


def test_anything_but_pairs_of_secrets_is_refused() -> None:
    from crypten_mpcache.secure.primitives.products import multiply_together

    with pytest.raises(TypeError, match="pairs of MPCTensors"):
        multiply_together([])
    with pytest.raises(TypeError, match="pairs of MPCTensors"):
        multiply_together([(torch.ones(2), torch.ones(2))])
