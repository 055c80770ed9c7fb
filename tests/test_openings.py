"""Protocols split at their openings (``secure.primitives.openings``): chains of stages run
in lockstep, one round per stage for all of them, each opening charged to its operator."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, launch


def _chains_party() -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.runtime.cost import CostMeter, operator_scope
    from crypten_mpcache.secure.primitives.openings import (
        charged,
        ready,
        run_together,
        then,
    )
    from crypten_mpcache.secure.primitives.products import products_pending

    x, y, z = (crypten.cryptensor(torch.tensor([1.5, -2.0, 0.25]) * k) for k in (1, 2, 3))
    w = crypten.cryptensor(torch.tensor([[0.5, 4.0]]))

    def three_stages():   # ((x y) z) x: each product needs the one before
        return then(products_pending([(x, y)]), lambda a: then(
            products_pending([(a[0], z)]), lambda b: then(
                products_pending([(b[0], x)]), lambda c: c[0])))

    def one_stage():      # w w after a local step that costs no round
        return then(ready(w), lambda v: then(products_pending([(v, v)]), lambda c: c[0]))

    out = {}
    before = comm.get().comm_rounds
    long, short = run_together(three_stages(), one_stage())
    out["together"] = (comm.get().comm_rounds - before, long.get_plain_text(),
                       short.get_plain_text())
    before = comm.get().comm_rounds
    run_together(three_stages())
    run_together(one_stage())
    out["apart"] = comm.get().comm_rounds - before
    # a step after a whole chain sees its LAST stage's result
    two = then(products_pending([(x, y)]), lambda a: products_pending([(a[0], z)]))
    before = comm.get().comm_rounds
    (last,) = run_together(then(two, lambda b: b[0] + 1))
    out["composed"] = (comm.get().comm_rounds - before, last.get_plain_text())

    meter = CostMeter()
    with meter.phase("decode/0"), operator_scope("attention_values"):
        run_together(products_pending([(w, w)]), charged(products_pending([(x, z)]),
                                                         "softmax"))
        run_together(charged(products_pending([(x, z)]), "softmax"),
                     products_pending([(w, w)]))
    out["report"] = meter.report()
    return out


def test_chains_run_in_lockstep_and_charge_each_operator_its_opening() -> None:
    out = launch(_chains_party, config=LaunchConfig(dealer="tfp", timeout_s=300))[0]
    rounds, long, short = out["together"]
    x = torch.tensor([1.5, -2.0, 0.25])
    assert torch.allclose(long, x * (2 * x) * (3 * x) * x, atol=1e-3)
    assert torch.allclose(short, torch.tensor([[0.25, 16.0]]), atol=1e-3)
    assert rounds == 3 and out["apart"] == 4      # the longest chain, not the sum
    assert out["composed"][0] == 2
    assert torch.allclose(out["composed"][1], x * (2 * x) * (3 * x) + 1, atol=1e-3)
    ops = out["report"]["phase_operators"]["decode/0"]
    # x z opens both operands (2 x 3 elements), the square w w opens w once (2), at 8
    # bytes, counted sent + received
    assert ops["softmax"]["bytes"] == 2 * (2 * 2 * 3 * 8)
    assert ops["attention_values"]["bytes"] == 2 * (2 * 1 * 2 * 8)
    # the round goes to the first part's operator: one each
    assert ops["softmax"]["rounds"] == 1 and ops["attention_values"]["rounds"] == 1
    phase = out["report"]["phases"][0]
    assert sum(op["bytes"] for op in ops.values()) == phase["bytes"]
    assert sum(op["rounds"] for op in ops.values()) == phase["rounds"]


def _deferred_party(direct: bool) -> dict:
    import crypten
    import crypten.communicator as comm

    from crypten_mpcache.secure.functions.softmax import SoftmaxConfig, masked_softmax_parts
    from crypten_mpcache.secure.primitives.openings import open_alone, run_together
    from crypten_mpcache.secure.primitives.premask import fixed_operand

    g = torch.Generator().manual_seed(3)
    scores = crypten.cryptensor(torch.randn(1, 2, 1, 40, generator=g) * 3)
    values = fixed_operand(crypten.cryptensor(torch.randn(1, 2, 40, 8, generator=g)),
                           name="v")
    mask = torch.ones(1, 1, 1, 40)
    mask[..., 30:] = 0
    counted = comm.get()
    config = SoftmaxConfig() if direct else SoftmaxConfig(direct_max_width=0)  # reduced

    alone = masked_softmax_parts(scores, mask, config=config)
    before = counted.comm_rounds
    open_alone(alone.reciprocal)
    reciprocal_rounds = counted.comm_rounds - before

    parts = masked_softmax_parts(scores, mask, config=config)
    before = counted.comm_rounds
    weighted, inverse = run_together(values.rmatmul_pending(parts.exps), parts.reciprocal)
    out = weighted * inverse
    return {"reciprocal": reciprocal_rounds, "deferred": counted.comm_rounds - before,
            "out": out.get_plain_text()}


@pytest.mark.parametrize("direct", [True, False], ids=["direct-table", "range-reduced"])
def test_values_product_opens_beside_the_softmax_reciprocal(direct: bool) -> None:
    """(exps V) / sum(exps): the values product costs no round of its own (it opens with
    the reciprocal's first round), only the final product does; and it is attention."""
    out = launch(_deferred_party, direct,
                 config=LaunchConfig(dealer="tfp", timeout_s=300))[0]
    assert out["deferred"] == out["reciprocal"] + 1
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 2, 1, 40, generator=g) * 3
    values = torch.randn(1, 2, 40, 8, generator=g)
    want = torch.softmax(scores[..., :30], -1) @ values[..., :30, :]
    assert (out["out"] - want).abs().max() < 0.01
