"""Independent products in one round (``secure.primitives.products``): each equals the
separate CrypTen product (its scaling included), together they cost one round, and each
factor is opened at its own shape (a square once)."""

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
    up = crypten.cryptensor(torch.randn(3, 5, generator=g))
    pairs = [(x, s), (bits, x), (x, bits), (y, y), (bits, up), (up, x)]
    before, sent = comm.get().comm_rounds, comm.get().comm_bytes
    together = multiply_together(pairs)
    rounds, together_bytes = comm.get().comm_rounds - before, comm.get().comm_bytes - sent
    before, sent = comm.get().comm_rounds, comm.get().comm_bytes
    separate = [a * b for a, b in pairs]
    separate_rounds, separate_bytes = comm.get().comm_rounds - before, \
        comm.get().comm_bytes - sent
    sent = comm.get().comm_bytes
    y.square()                                                  # CrypTen's: opens y once
    y_bytes = comm.get().comm_bytes - sent
    return {"separate_rounds": separate_rounds,
            "together": [(t.get_plain_text(), t.encoder.scale) for t in together],
            "separate": [(t.get_plain_text(), t.encoder.scale) for t in separate],
            "rounds": rounds, "bytes": (together_bytes, separate_bytes, y_bytes)}


@pytest.mark.parametrize("parties", [2, 3])
def test_products_together_equal_the_separate_ones_in_one_round(parties: int) -> None:
    out = launch(_products_party, config=LaunchConfig(parties=parties, dealer="tfp",
                                                      timeout_s=300))[0]
    for (got, got_scale), (want, want_scale) in zip(out["together"], out["separate"],
                                                    strict=True):
        assert got.shape == want.shape and got_scale == want_scale
        assert (got - want).abs().max() <= 2 ** -14          # truncation: a few ulp
    # 2 parties truncate locally: one round for all six (six apart); 3 parties truncate
    # by CrypTen's protocol, once for the three truncating products
    assert (out["rounds"], out["separate_rounds"]) == ((1, 6) if parties == 2 else (3, 12))
    if parties == 2:  # CrypTen opens each factor of each pair, y * y twice. Here y once
        # (a square) and x, shared by four pairs, twice: once against the stacked (3, 1)
        # factors s, bits, bits and once against up (3, 5), another shape
        together_bytes, separate_bytes, y_bytes = out["bytes"]
        x_bytes = y_bytes * 15 // 4                           # |x| = 15, |y| = 4 words
        assert together_bytes == separate_bytes - y_bytes - 2 * x_bytes


def _broadcast_party() -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.secure.primitives.products import multiply_together

    g = torch.Generator().manual_seed(3)
    x = crypten.cryptensor(torch.randn(64, 32, generator=g) * 8)
    s = crypten.cryptensor(torch.rand(64, 1, generator=g) + 0.5)
    sent = comm.get().comm_bytes
    (product,) = multiply_together([(x, s)])
    spent = comm.get().comm_bytes - sent
    sent = comm.get().comm_bytes
    crypten.cryptensor(torch.zeros(64 * 32 + 64)).get_plain_text()   # one opening of both
    reference = comm.get().comm_bytes - sent
    return {"x": x.get_plain_text(), "s": s.get_plain_text(),
            "product": product.get_plain_text(), "bytes": (spent, reference)}


def test_a_broadcast_factor_is_opened_at_its_own_shape() -> None:
    """x * s for a per-row s opens |x| + |s| words (the RMSNorm's x * scale), not 2 |x|."""
    out = launch(_broadcast_party, config=LaunchConfig(parties=2, dealer="tfp",
                                                       timeout_s=300))[0]
    assert (out["product"] - out["x"] * out["s"]).abs().max() < 2 ** -12
    spent, reference = out["bytes"]
    assert spent == reference


def test_anything_but_pairs_of_secrets_is_refused() -> None:
    from crypten_mpcache.secure.primitives.products import multiply_together

    with pytest.raises(TypeError, match="pairs of MPCTensors"):
        multiply_together([])
    with pytest.raises(TypeError, match="pairs of MPCTensors"):
        multiply_together([(torch.ones(2), torch.ones(2))])
