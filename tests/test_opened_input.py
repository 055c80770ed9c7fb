"""One opening of x for its truncations, squares and a later product
(``secure.primitives.opened_input``): the values against their definitions at the
edges (0, +-1 ulp, negative, |x| up to 2^14), 2 and 3 parties, TTP and TFP; one opened
word per element of x and per element of y; the dealt words from the layout alone."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.primitives import opened_input

SHIFTS = (0, 3, 7, 14)
X = torch.tensor([[0.0, 2 ** -16, -2 ** -16, 1.0, -1.0, 3.75, -3.75, 127.5],
                  [-16384.0, 16383.9, 0.5, -0.5, 1000.25, -1000.25, 7.0, -7.0]])


def _job(x: torch.Tensor) -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.secure.primitives.openings import open_alone, open_together

    y = torch.tensor([[0.25], [-3.5]])
    cx, cy = crypten.cryptensor(x), crypten.cryptensor(y)

    def online() -> tuple[float, int]:     # without the dealer's traffic (TTP on demand)
        c = comm.get()
        return (c.comm_bytes - getattr(c, "dealer_bytes", 0),
                c.comm_rounds - getattr(c, "dealer_rounds", 0))

    sent, rounds = online()
    opened = open_alone(opened_input.open_input_pending(cx, SHIFTS, (2, 1)))
    first = (online()[0] - sent, online()[1] - rounds)
    squares = opened.squares()
    sent, rounds = online()
    (product,) = open_together(opened.times_pending(cy))
    second = (online()[0] - sent, online()[1] - rounds)
    sent = online()[0]
    crypten.cryptensor(torch.zeros(1)).get_plain_text()
    word = online()[0] - sent
    return {"squares": squares.get_plain_text(), "product": product.get_plain_text(),
            "first": first, "second": second, "word": word}


@pytest.mark.parametrize("parties,dealer", [(2, "ttp"), (3, "ttp"), (2, "tfp"), (3, "tfp")])
def test_truncations_squares_and_the_product_match_their_definitions(parties: int,
                                                                      dealer: str) -> None:
    out = launch(_job, X, config=LaunchConfig(parties=parties, dealer=dealer,
                                              timeout_s=300))[0]
    raw = (X * 2 ** 16).round().long()
    for i, s in enumerate(SHIFTS):
        exact = torch.div(raw, 2 ** s, rounding_mode="floor").double() / 2 ** 16
        low = exact - 2 ** -16                        # the carry: one below at most
        want = torch.maximum(exact.abs(), low.abs()) ** 2
        # t^2 for t in {exact, exact - 1 ulp}, then CrypTen's truncation of the square
        slack = 2 * exact.abs() * 2 ** -16 + 2 * 2 ** -16 + 4 * 2 ** -16
        got = out["squares"][i].double()
        if s == 0:
            big = X.abs() > 1600    # fine squares that wrap the truncation (why the shifts)
            got, want, slack = got[~big], want[~big], slack[~big]
        assert ((got - want).abs() <= slack).all(), (s, got, want)
    y = torch.tensor([[0.25], [-3.5]])
    assert torch.allclose(out["product"].double(), (X * y).double(), atol=4 * 2 ** -16)
    word = out["word"]
    assert out["first"] == (X.numel() * word, 1)      # x once, every shift and square
    if parties == 2:                                  # 3 parties: CrypTen's truncation
        assert out["second"] == (2 * word, 1)         # y only


def test_the_dealt_words_follow_the_layout() -> None:
    layout = opened_input.Layout((2, 8), SHIFTS, (2, 1))
    assert layout.free_words == 16 + 2
    assert layout.dependent_words == 3 * 16 + 4 * 16 + 16
    assert opened_input.Layout((2, 8), (0,), None).dependent_words == 16
    a = torch.tensor([-1, 5, 2 ** 40 + 3])
    assert opened_input.logical_shift(a, 3).tolist() == [2 ** 61 - 1, 0, 2 ** 37]
    with pytest.raises(ValueError, match="shifts"):
        opened_input.Layout((2,), (3,), None)
    with pytest.raises(ValueError, match="shifts"):
        opened_input.Layout((2,), (0, 63), None)
