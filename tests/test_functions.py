"""Accuracy of the secure nonlinear functions against plaintext torch, 2 parties, TFP.

The ranges come from the embedded SmolLM2-135M (docs/numerics.md): mean(x^2) at RMSNorm
inputs in [0.0059, 1.12e6] (|x| up to 25,199), gate pre-activations in [-33.3, 50.2].
All checks of one kind run inside one launch to keep the suite fast.
"""

from __future__ import annotations

import pytest
import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.secure.functions import activation, approx, norm, softmax, tournament

TFP = LaunchConfig(parties=2, dealer="tfp", timeout_s=300)


def _comm() -> tuple[float, int]:
    import crypten.communicator as comm

    return comm.get().comm_bytes, comm.get().comm_rounds


def _exact(x) -> torch.Tensor:
    """raw / scale: CrypTen's decode turns -k + r/2**16 (1 <= r < k) into -k - 1 + r/2**16
    (see tests/test_smollm2_fidelity.py), a rare but real flake for outputs below -2."""
    return (x._tensor.reveal().double() / x.encoder.scale).float()


def _norm_job() -> dict:
    import crypten

    torch.manual_seed(0)
    # rows whose mean(x^2) spans the measured range, plus one massive activation, plus a
    # spike whose fine square (60,000^2 * 2^32 > 2^63) wraps the ring in every party
    # count: only a working pick of the coarse estimate keeps that row right
    scales = torch.tensor([0.075, 0.3, 1.0, 3.0, 30.0, 300.0, 1000.0, 1.0])
    x = torch.randn(len(scales), 576) * scales[:, None]
    x[-2, 7] = 25_000.0
    x[-1, 3] = 60_000.0
    weight = torch.rand(576) + 0.5
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    out = {"ref": ref}
    out["enc_weight"] = _exact(norm.rms_norm(crypten.cryptensor(x), crypten.cryptensor(weight),
                                          1e-5))
    out["public_weight"] = _exact(norm.rms_norm(crypten.cryptensor(x), weight, 1e-5))

    class Premasked:  # stands for a fixed operand premasked once
        def mul(self, y):
            return y * weight

    out["premasked"] = _exact(norm.rms_norm(crypten.cryptensor(x), Premasked(), 1e-5))
    costs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        b0, r0 = _comm()
        norm.rms_norm(crypten.cryptensor(torch.randn(3, 576) * seed * 40), None, 1e-5)
        b1, r1 = _comm()
        costs.append((b1 - b0, r1 - r0))
    out["costs"] = costs
    b0, r0 = _comm()
    crypten.cryptensor(torch.randn(3, 1, 19)).ge(0.5)
    out["comparison_rounds"] = _comm()[1] - r0
    b0, r0 = _comm()
    newton = norm.NormConfig(inv_sqrt="newton")
    norm.rms_norm(crypten.cryptensor(torch.randn(3, 576) * 40), None, 1e-5, config=newton)
    b1, r1 = _comm()
    out["newton_costs"] = (b1 - b0, r1 - r0)
    out["newton"] = _exact(norm.rms_norm(crypten.cryptensor(x), weight, 1e-5, config=newton))
    moderate = x[1:5]  # no massive activation: a single estimate or two are enough
    for name, config in (("fine_only", norm.NormConfig(coarse_shift=0, medium_shift=0)),
                         ("no_medium", norm.NormConfig(medium_shift=0))):
        out[name] = (moderate * torch.rsqrt(moderate.pow(2).mean(-1, keepdim=True) + 1e-5),
                     _exact(norm.rms_norm(crypten.cryptensor(moderate), None, 1e-5,
                                       config=config)))
    return out


def test_rms_norm_over_measured_range() -> None:
    result = launch(_norm_job, config=TFP)[0]
    ref = result["ref"]
    for key in ("enc_weight", "public_weight", "premasked", "newton"):
        rel = (result[key] - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert rel.max() < 1e-2, (key, rel)
    assert result["costs"][0] == result["costs"][1]           # oblivious transcript
    for name in ("fine_only", "no_medium"):
        expected, got = result[name]
        assert ((got - expected).norm(dim=-1) / expected.norm(dim=-1)).max() < 1e-2, name
    # squares 1, switches and buckets of all estimates in ONE comparison round, the
    # normalization beside the taken S 1, the order-1 table's opening beside x * S and the
    # weights times the Taylor steps 1, the picked coefficients 1, (x * S) * y_n 1
    assert result["costs"][0][1] == 1 + result["comparison_rounds"] + 1 + 1 + 1 + 1
    # Newton: its 3 x 3 rounds, then x * S, the pick and the product, where the table's
    # tail takes 3
    assert result["newton_costs"][1] == result["costs"][0][1] - 3 + 3 * 3 + 3


def _take_over_job() -> dict:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter

    garbage = 2.0 ** 40                                    # what a wrapped estimate holds
    values = crypten.cryptensor(torch.tensor([[1.0, garbage, 3.0, garbage],
                                              [garbage, 2.0, garbage, garbage],
                                              [garbage, garbage, 5.0, 7.0]]))
    bits = [crypten.cryptensor(torch.tensor([0.0, 1.0, 1.0, 1.0]), precision=0),
            crypten.cryptensor(torch.tensor([0.0, 0.0, 1.0, 1.0]), precision=0)]
    meter = CostMeter()
    with meter.phase("pick"):
        picked = norm._take_over(values, bits)
    return {"picked": picked.get_plain_text(), "rounds": meter.report()["phases"][0]["rounds"]}


def _picked_tail_job() -> dict:
    import crypten

    garbage = 1.234567e12                                  # what a wrapped estimate holds
    x = torch.tensor([[3.0, -1.0, 0.5], [2.0, 2.0, -4.0], [1.0, 0.0, 1.0]])
    v_n = crypten.cryptensor(torch.tensor([[[2.0], [garbage], [garbage]],
                                           [[garbage], [1.5], [garbage]],
                                           [[garbage], [3.0], [1.25]]]))      # (E, rows, 1)
    bits = [crypten.cryptensor(torch.tensor([[0.0], [1.0], [1.0]]), precision=0),
            crypten.cryptensor(torch.tensor([[0.0], [0.0], [1.0]]), precision=0)]
    scale = crypten.cryptensor(torch.tensor([[0.5], [2.0], [0.25]]))
    config = norm.NormConfig()
    opened = norm.open_alone(norm._opening(crypten.cryptensor(x), config, fused=True))
    out = norm._picked_order1(opened, v_n, scale, bits, config)
    return {"x": x, "out": out.get_plain_text()}


def test_the_picked_table_tail_cancels_a_wrapped_estimate() -> None:
    """Rows take estimate 0, 1 and 2 (monotone bits); the others hold 2^40: the result is
    x * S / sqrt(v_n) of the taken one, to the table's precision."""
    result = launch(_picked_tail_job, config=TFP)[0]
    taken = torch.tensor([[2.0], [1.5], [1.25]])
    expected = result["x"] * torch.tensor([[0.5], [2.0], [0.25]]) * taken.rsqrt()
    assert (result["out"] - expected).abs().max() < 1e-3


def test_the_estimate_pick_takes_the_last_set_switch_in_one_round() -> None:
    """Monotone switch bits pick values[0], [1] or [2] exactly, whatever the others hold."""
    result = launch(_take_over_job, config=TFP)[0]
    assert result["picked"].tolist() == [1.0, 2.0, 5.0, 7.0]
    assert result["rounds"] == 1


def _silu_job() -> dict:
    import crypten

    xs = torch.cat([torch.linspace(-33.3, 50.2, 1500), torch.randn(500) * 3,
                    torch.tensor([-15.05, -15.0, 15.0, 15.05, -16.0, 16.0])])
    out = {"x": xs}
    for method in ("sigmoid", "exp_poly", "piecewise", "lookup"):
        b0, r0 = _comm()
        config = activation.ActivationConfig(method=method)
        y = activation.silu(crypten.cryptensor(xs), config=config)
        b1, r1 = _comm()
        out[method] = (y.get_plain_text(), (b1 - b0) / xs.numel(), r1 - r0)
    return out


def test_silu_methods_accurate_on_gate_range() -> None:
    result = launch(_silu_job, config=TFP)[0]
    ref = torch.nn.functional.silu(result["x"])
    limits = {"sigmoid": 1e-2, "exp_poly": 5e-3, "piecewise": 2e-2, "lookup": 2e-3}
    for method, limit in limits.items():
        y, _, _ = result[method]
        assert (y - ref).abs().max() < limit, method
    # the cheap options must not cost more rounds than x * sigmoid(x)
    assert result["exp_poly"][2] <= result["sigmoid"][2]
    assert result["piecewise"][2] < result["sigmoid"][2]
    # the table (the default) is the cheapest online: TFP has no dealer traffic
    assert result["lookup"][1] < 0.7 * result["exp_poly"][1]
    assert result["lookup"][2] < result["piecewise"][2] < result["exp_poly"][2]
    # exact round counts: the two gate products share one round (before: 14 and 13), the
    # gates' masked comparison is 4 rounds (the input bound's 30 bits: a tree of 4 then
    # 8), not 8; the table's index and d^2 open with the gates' masked input (one round),
    # then the quadratic is one round
    assert (result["piecewise"][2], result["lookup"][2]) == (9, 6)


def _large_gate_job() -> dict:
    import crypten

    xs = torch.tensor([-1000.0, -40.0, 40.0, 1000.0, 3000.0])
    return {"x": xs, "y": _exact(activation.silu(crypten.cryptensor(xs)))}


def test_lookup_silu_has_no_range_limit_and_three_parties() -> None:
    """Beyond the table the gates return 0 or x exactly; 3 parties (CrypTen's truncation
    protocol for the segment index) stay accurate too."""
    result = launch(_large_gate_job, config=TFP)[0]
    assert torch.allclose(result["y"], torch.nn.functional.silu(result["x"]), atol=1e-3)
    three = launch(_silu_job, config=LaunchConfig(parties=3, dealer="ttp", timeout_s=300))[0]
    y, _, _ = three["lookup"]
    assert (y - torch.nn.functional.silu(three["x"])).abs().max() < 3e-2


def _softmax_job() -> dict:
    import crypten

    torch.manual_seed(0)
    scores = torch.randn(2, 3, 12, 12) * 6
    causal = torch.tril(torch.ones(12, 12))
    long_rows = torch.randn(2, 3000) * 3
    long_mask = torch.ones(2, 3000)
    long_mask[1, 2500:] = 0                                  # 2500 allowed entries
    out = {"scores": scores, "causal": causal, "long": long_rows, "long_mask": long_mask}
    out["p"] = softmax.masked_softmax(crypten.cryptensor(scores), causal).get_plain_text()
    out["p_dim"] = softmax.masked_softmax(crypten.cryptensor(scores.transpose(-1, -2)),
                                    causal.T, dim=-2).get_plain_text()
    out["p_long"] = softmax.masked_softmax(crypten.cryptensor(long_rows),
                                     long_mask).get_plain_text()
    return out


def _reference_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1)


def test_masked_softmax_causal_and_long_rows() -> None:
    r = launch(_softmax_job, config=TFP)[0]
    ref = _reference_softmax(r["scores"], r["causal"])
    assert (r["p"] - ref).abs().max() < 3e-3
    assert torch.all(r["p"][..., r["causal"] == 0] == 0)     # exact zeros where masked
    assert (r["p_dim"].transpose(-1, -2) - ref).abs().max() < 3e-3
    ref_long = _reference_softmax(r["long"], r["long_mask"])
    assert torch.all(r["p_long"][1, 2500:] == 0)
    err = (r["p_long"] - ref_long).abs().max(-1).values
    assert (err / ref_long.max(-1).values).max() < 1e-2     # exp's 2**8 powers: ~0.4%
    assert (r["p_long"].sum(-1) - 1).abs().max() < 2e-2


def _reciprocal_job() -> dict:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter

    d = torch.cat([torch.tensor([1.0, 1.0 + 2 ** -10, 3.999, 4.0, 17.0, 2049.0, 65535.0]),
                   4.0 ** (torch.rand(200, generator=torch.Generator().manual_seed(1)) * 8)])
    reduction = approx.RangeReduction(1.0, 4, 9)
    out: dict = {"d": d}
    for name, steps, order in (("linear", 512, 1), ("lookup", 64, 2), ("newton", None, 2)):
        meter = CostMeter()
        with meter.phase(name):
            y = approx.reciprocal(crypten.cryptensor(d), reduction, 3, steps, order)
        out[name] = (y.get_plain_text(), meter.report()["phases"][0]["rounds"])
    return out


def test_the_reciprocal_by_table_read_is_as_accurate_as_newton_in_fewer_rounds() -> None:
    r = launch(_reciprocal_job, config=TFP)[0]
    exact = 1 / r["d"]
    errors = {name: (r[name][0] - exact).abs() for name in ("linear", "lookup", "newton")}
    # a few ulps of the output encoding, and relative (2/64)^3 or (2/512)^2 above them
    assert (errors["lookup"] <= 3e-5 * exact + 4 * 2 ** -16).all()
    assert (errors["linear"] <= 1.6e-5 * exact + 4 * 2 ** -16).all()
    assert (errors["newton"] <= 2e-4 * exact + 4 * 2 ** -16).all()   # 3 iterations: ~1e-4
    assert errors["lookup"].max() <= errors["newton"].max()
    assert r["newton"][1] - r["lookup"][1] == 4           # 6 Newton rounds -> a 2-round read
    assert r["lookup"][1] == r["linear"][1]               # order 2: d^2 beside the opening


def _online_rounds(meter) -> int:
    phase = meter.report()["phases"][0]
    return int(phase["rounds"] - phase["dealer_rounds"])      # TTP: dealer requests apart


def _exp_job() -> dict:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter

    d = torch.cat([torch.tensor([0.0, -2 ** -16, -1.0, -5.5, -14.9, -15.0, -15.1, -40.0,
                                 -3000.0]), -torch.rand(300, generator=torch.Generator()
                                                        .manual_seed(2)) * 16])
    out: dict = {"d": d}
    for name in ("lookup", "squaring"):
        meter = CostMeter()
        with meter.phase(name):
            if name == "lookup":
                y = approx.lookup_exp_nonpositive(crypten.cryptensor(d), 16, 256, 14)
            else:
                y = approx.exp_nonpositive(crypten.cryptensor(d), 8, 2)
        out[name] = (y.get_plain_text(), _online_rounds(meter))
    rows = crypten.cryptensor(torch.randn(2, 3, 40) * 4)
    mask = torch.ones(40)
    for name in ("auto", "squaring"):
        meter = CostMeter()
        with meter.phase(name):
            probs = softmax.masked_softmax(rows, mask, config=softmax.SoftmaxConfig(exp=name))
        out[f"softmax_{name}"] = (probs.get_plain_text(), _online_rounds(meter))
    out["rows"] = rows.get_plain_text()
    return out


@pytest.mark.parametrize("parties", [2, 3])
def test_exp_by_a_clipped_table_is_more_accurate_in_three_rounds(parties) -> None:
    """Under dcf the clip fuses: 3 rounds (the clip; the index's opening beside d^2; the
    quadratic) against the squarings' 9, a smaller error, and
    exp of anything below -15 (even far outside the squarings' range) is ~0 (3 parties:
    the segment index of the clipped floor may be 2 below it, inside the table's margin).
    The softmax's "auto" takes the table for a small call, with the same probabilities."""
    r = launch(_exp_job, config=LaunchConfig(parties=parties, dealer="ttp", comparison="dcf",
                                             timeout_s=300))[0]
    exact = r["d"].double().exp()
    table, table_rounds = r["lookup"]
    squares, square_rounds = r["squaring"]
    reach = 2 if parties == 2 else 4        # index off by 1 (2 parties) or up to 3
    ulps = 4 if parties == 2 else 6         # 3 parties: CrypTen's truncation errs more
    excess = (table - exact).abs() - ((reach / 16) ** 3 / 6 * exact + ulps * 2 ** -16)
    assert (excess <= 0).all(), (excess.max(), r["d"][excess.argmax()])
    inside = r["d"] > -10                  # the squarings' stated accuracy range
    if parties == 2:
        assert (table - exact).abs()[inside].max() < (squares - exact).abs()[inside].max()
    if parties == 2:
        assert (table_rounds, square_rounds) == (3, 9)
    assert table_rounds < square_rounds          # 3 parties: each truncation takes rounds
    auto, auto_rounds = r["softmax_auto"]
    plain, plain_rounds = r["softmax_squaring"]
    reference = torch.softmax(r["rows"].double(), dim=-1)
    assert (auto - reference).abs().max() < 2e-3 and (plain - reference).abs().max() < 5e-3
    # 3 parties: c_1 d (from d's one opening) truncates apart from c_2 d^2, one
    # truncation protocol more than when both were Beaver products
    assert plain_rounds - auto_rounds == (6 if parties == 2 else 13)


def _direct_reciprocal_job() -> dict:
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter

    torch.manual_seed(3)
    scores = torch.randn(4, 100) * 3
    scores[0] = 0.0                                    # a flat row: the denominator is 100
    mask = torch.ones(4, 100)
    mask[1, 7:] = 0                                    # a short row: 7 entries
    out: dict = {"reference": torch.softmax(scores.masked_fill(mask == 0, -1e9), dim=-1)}
    for name, width in (("direct", 8192), ("reduced", 0)):
        meter = CostMeter()
        with meter.phase(name):
            probs = softmax.masked_softmax(crypten.cryptensor(scores), mask,
                                           config=softmax.SoftmaxConfig(direct_max_width=width))
        out[name] = (probs.get_plain_text(), meter.report()["phases"][0]["rounds"])
    b0, r0 = _comm()
    crypten.cryptensor(torch.randn(4, 1, 8)).ge(0.5)     # the reduction's one comparison
    out["comparison_rounds"] = _comm()[1] - r0
    return out


def test_short_rows_read_the_reciprocal_directly_in_two_rounds_less() -> None:
    """100 allowed entries at 64 steps fit a 8,192-word table: 1/d without the range
    reduction's comparison and power-of-two product, as accurate."""
    r = launch(_direct_reciprocal_job, config=TFP)[0]
    for name in ("direct", "reduced"):
        assert (r[name][0] - r["reference"]).abs().max() < 2e-3, name
    # the reduction's comparison round(s), its normalize and its power-of-two product
    # (its order-1 table takes 2 rounds, as the direct quadratic with d^2 beside the
    # opening)
    assert r["reduced"][1] - r["direct"][1] == r["comparison_rounds"] + 2


def _argmax_job() -> dict:
    import crypten

    torch.manual_seed(0)
    x = torch.randn(3, 37) * 5
    x[0, 4] = x[0, 20] = 100.0                               # a tie: lowest index wins
    vocab = torch.randn(1, 49_152)
    out = {"x": x, "vocab": vocab}
    out["oh"] = tournament.argmax_onehot(crypten.cryptensor(x)).get_plain_text()
    out["oh_dim0"] = tournament.argmax_onehot(crypten.cryptensor(x.T), dim=0).get_plain_text()
    out["oh_vocab"] = tournament.argmax_onehot(crypten.cryptensor(vocab)).get_plain_text()
    return out


def test_argmax_onehot_exactly_one_lowest_index() -> None:
    r = launch(_argmax_job, config=TFP)[0]
    expected = torch.nn.functional.one_hot(r["x"].argmax(-1), 37).float()
    assert torch.equal(r["oh"], expected)
    assert expected[0, 4] == 1
    assert torch.equal(r["oh_dim0"], expected.T)
    assert torch.equal(r["oh_vocab"],
                       torch.nn.functional.one_hot(r["vocab"].argmax(-1), 49_152).float())


def test_configs_validate() -> None:
    with pytest.raises(ValueError):
        norm.NormConfig(low=0.3)
    with pytest.raises(ValueError):
        activation.ActivationConfig(method="relu")
    with pytest.raises(ValueError, match="power of two"):
        activation.ActivationConfig(lookup_steps=3)
    with pytest.raises(ValueError, match="power of two"):
        activation.ActivationConfig(lookup_bound=5.0)
    with pytest.raises(ValueError, match="order"):
        activation.ActivationConfig(lookup_order=3)
    assert activation.ActivationConfig().lookup_width == 128
    with pytest.raises(ValueError):
        softmax.SoftmaxConfig(buckets=12)
    with pytest.raises(ValueError, match="reciprocal must be"):
        softmax.SoftmaxConfig(reciprocal="exact")
    with pytest.raises(ValueError, match="power of two"):
        softmax.SoftmaxConfig(lookup_steps=48)
    with pytest.raises(ValueError, match="exp must be"):
        softmax.SoftmaxConfig(exp="table")
    with pytest.raises(ValueError, match="exp_lookup_width"):
        softmax.SoftmaxConfig(exp_lookup_width=128)
    with pytest.raises(ValueError):
        approx.RangeReduction(low=1.0, ratio=3, buckets=4)


@pytest.mark.slow
def test_measured_ranges_inside_supported() -> None:
    """Re-measure SmolLM2's ranges on real text; they must lie inside the configs' ranges."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crypten_mpcache import assets

    folder = assets.smollm2_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    seen = {"ms": [], "gate": []}
    hooks = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RMSNorm"):
            hooks.append(module.register_forward_pre_hook(
                lambda m, a: seen["ms"].append(a[0].float().pow(2).mean(-1))))
        if name.endswith("mlp.gate_proj"):
            hooks.append(module.register_forward_hook(
                lambda m, a, o: seen["gate"].append(o.detach())))
    texts = [essay[:6000] for essay in assets.essay_texts()[:3]]
    with torch.no_grad():
        for text in texts:
            model(tok(text, return_tensors="pt").input_ids[:, :512])
    for hook in hooks:
        hook.remove()
    ms = torch.cat([m.flatten() for m in seen["ms"]])
    gate = torch.cat([g.flatten() for g in seen["gate"]])
    red = norm.NormConfig().reduction
    assert red.low < ms.min() and ms.max() < red.high
    assert gate.abs().max() < 2 ** activation.ActivationConfig().exp_iterations


def _silu_times_job() -> dict:
    import crypten

    xs = torch.cat([torch.linspace(-33.3, 50.2, 600), torch.tensor([-16.0, -15.0, 15.0, 16.0])])
    up = torch.randn(xs.numel(), generator=torch.Generator().manual_seed(2)) * 4
    x, u = crypten.cryptensor(xs), crypten.cryptensor(up)
    out = {"x": xs, "up": up}
    for name, fn in (("product", lambda: x * u),
                     ("separate", lambda: activation.silu(x) * u),
                     ("together", lambda: activation.silu_times(x, u))):
        b0, r0 = _comm()
        y = fn()
        b1, r1 = _comm()
        out[name] = (y.get_plain_text(), b1 - b0, r1 - r0)
    return out


@pytest.mark.parametrize("comparison", ["hybrid", "masked", "crypten"])
def test_silu_times_up_takes_up_along_the_gates(comparison: str) -> None:
    """silu(x) * up with up inside the gates: as accurate, one round fewer for one more
    opened word per element (the gates' selects give [x > edge] x without a product:
    silu(x) up = inner (mid up) + ([x > edge] x) up, and up is opened once for both
    products), with DCF gates (hybrid) and masked ones; CrypTen's comparison selects by a
    product after it."""
    config = LaunchConfig(parties=2, dealer="tfp", comparison=comparison)
    result = launch(_silu_times_job, config=config)[0]
    ref = torch.nn.functional.silu(result["x"]) * result["up"]
    for name in ("separate", "together"):
        assert (result[name][0] - ref).abs().max() < 2e-3 * 4 * 4, name
    if comparison != "crypten":
        assert result["together"][2] == result["separate"][2] - 1
        assert result["together"][1] == result["separate"][1] + result["product"][1] // 2


def test_a_polynomial_from_the_step_opening_must_be_of_order_two() -> None:
    from crypten_mpcache.secure.functions.lookup import polynomial

    with pytest.raises(ValueError, match="order-2 table"):
        polynomial(None, None, torch.zeros(2, 8, dtype=torch.long), step=object())
