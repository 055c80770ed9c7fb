"""Cost accounting: exclusive operator scopes, phases, and the party merge rule."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.runtime.cost import CostMeter, combine, online, operator_scope
from crypten_mpcache.runtime.launcher import LaunchConfig, launch


def _metered() -> dict:
    import crypten
    import crypten.communicator as comm

    meter = CostMeter()
    x = crypten.cryptensor(torch.randn(4, 8))
    w = crypten.cryptensor(torch.randn(8, 8))
    with meter.phase("prefill"):
        with operator_scope("linear"):
            y = x.matmul(w)
            with operator_scope("softmax"):
                y = y.softmax(-1)
    start = comm.get().comm_bytes
    with meter.phase("decode/0"):
        with operator_scope("activation"):
            y.relu()
    relu_bytes = comm.get().comm_bytes - start
    report = meter.report()
    report["relu_bytes"] = relu_bytes
    return report


def test_operator_scopes_are_exclusive_and_sum_to_phases():
    reports = launch(_metered, config=LaunchConfig(dealer="tfp"))
    for report in reports:
        prefill = report["phases"][0]
        ops = report["phase_operators"]["prefill"]
        assert set(ops) >= {"linear", "softmax"}
        assert sum(op["bytes"] for op in ops.values()) == prefill["bytes"]
        assert sum(op["rounds"] for op in ops.values()) == prefill["rounds"]
        # one Beaver matmul: one round opening (4x8) and (8x8) int64 tensors with an
        # all-reduce, which CrypTen counts as sent + received at every party
        assert ops["linear"]["rounds"] == 1
        assert ops["linear"]["bytes"] == 2 * (4 * 8 + 8 * 8) * 8
        assert ops["softmax"]["rounds"] > 10
        assert report["operators"]["activation"]["bytes"] == report["relu_bytes"] > 0


def test_combine_sums_bytes_and_takes_the_max_of_rounds_and_seconds():
    part = {"phases": [{"phase": "prefill", "bytes": 10, "rounds": 3, "seconds": 1.0}],
            "operators": {"linear": {"bytes": 10, "rounds": 3, "seconds": 1.0}},
            "phase_operators": {"prefill": {"linear": {"bytes": 10, "rounds": 3,
                                                       "seconds": 1.0}}}}
    other = {"phases": [{"phase": "prefill", "bytes": 5, "rounds": 4, "seconds": 0.5}],
             "operators": {"softmax": {"bytes": 5, "rounds": 4, "seconds": 0.5}},
             "phase_operators": {"prefill": {"softmax": {"bytes": 5, "rounds": 4,
                                                         "seconds": 0.5}}}}
    merged = combine([part, other])
    no_dealer = {"dealer_bytes": 0, "dealer_rounds": 0, "dealer_seconds": 0.0}
    assert merged["phases"] == [{"phase": "prefill", "bytes": 15, "rounds": 4, "seconds": 1.0,
                                 **no_dealer}]
    assert merged["operators"]["linear"] == {"bytes": 10, "rounds": 3, "seconds": 1.0,
                                             **no_dealer}
    assert merged["operators"]["softmax"] == {"bytes": 5, "rounds": 4, "seconds": 0.5,
                                              **no_dealer}


def test_combine_keeps_the_slowest_party_online():
    """Party 0: 10 rounds of which 8 with the dealer (2 online); party 1: 5 online. The
    merged online rounds are the slowest party's 5, not 10 - 8. Seconds: party 0 spent 0.5
    of its 1.0 on the dealer, and party 1 waited for it meanwhile: 0.5 online."""
    def report(rounds: int, dealer_rounds: int, nbytes: int, dealer_bytes: int) -> dict:
        cost = {"bytes": nbytes, "rounds": rounds, "seconds": 1.0,
                "dealer_bytes": dealer_bytes, "dealer_rounds": dealer_rounds,
                "dealer_seconds": 0.5 if dealer_rounds else 0.0}
        return {"phases": [{"phase": "p", **cost}], "operators": {"linear": cost},
                "phase_operators": {"p": {"linear": cost}}}

    merged = combine([report(10, 8, 100, 60), report(5, 0, 40, 0)])
    phase = merged["phases"][0]
    assert (phase["rounds"], phase["dealer_rounds"]) == (10, 5)
    assert online(phase) == {"bytes": 80, "rounds": 5, "seconds": 0.5}


def _silu_cost() -> dict:
    import crypten

    from crypten_mpcache.secure.functions import activation

    meter = CostMeter()
    x = crypten.cryptensor(torch.randn(300) * 4)
    with meter.phase("p"), operator_scope("activation"):
        activation.silu(x)
    return meter.report()["phases"][0]


def test_dealer_traffic_is_tallied_and_online_equals_tfp():
    """With the TTP, party 0 asks the dealer for everything and party 1 only receives the
    keys' correction words it relays (the SiLU's DCF gates and its DPF one-hot; never
    more than party 0 receives); what is left (online) is exactly the transcript of the
    same computation with the local TFP dealer."""
    ttp = launch(_silu_cost, config=LaunchConfig(dealer="ttp"))
    tfp = launch(_silu_cost, config=LaunchConfig(dealer="tfp"))
    assert ttp[0]["dealer_bytes"] > 0 and ttp[0]["dealer_rounds"] > 0
    assert 0 < ttp[1]["dealer_bytes"] < ttp[0]["dealer_bytes"]
    for party in (0, 1):   # (TFP's dealer traffic: party 0 sending party 1 its DCF keys)
        got, want = online(ttp[party]), online(tfp[party])
        assert (got["bytes"], got["rounds"]) == (want["bytes"], want["rounds"])


def test_unknown_operator_kind_and_nested_phases_are_rejected():
    meter = CostMeter()
    with pytest.raises(ValueError, match="unknown operator kind"), meter.phase("p"):
        with operator_scope("teleport"):
            pass
    with pytest.raises(RuntimeError, match="inside phase"), meter.phase("a"):
        with meter.phase("b"):
            pass
    with pytest.raises(ValueError, match="no party reports"):
        combine([])


def test_generate_report_shows_the_dealer_part_and_the_online_rest():
    from crypten_mpcache.runtime.report import format_cost

    mib = 1024 * 1024
    step = {"step": 1, "bytes": 3 * mib, "rounds": 30, "seconds": 1.0,
            "dealer_bytes": mib, "dealer_rounds": 20, "dealer_seconds": 0.25}
    prefill = {"bytes": 0, "rounds": 0, "seconds": 0.0}
    text = format_cost({"prefill": prefill, "decode": [step], "operators": {}})
    lines = text.splitlines()
    mean = lines.index(next(line for line in lines if "decode (mean/step)" in line))
    assert lines[mean + 1].split()[:2] == ["offline", "(dealer)"]
    assert lines[mean + 1].split()[-3:] == ["1.000", "20", "0.25"]
    assert lines[mean + 2].split() == ["online", "2.000", "10", "0.75"]
    without = format_cost({"prefill": prefill, "decode": [{**step, "dealer_bytes": 0,
                                                            "dealer_rounds": 0}],
                           "operators": {}})
    assert "offline (dealer)" not in without
    dealt_prefill = format_cost({"prefill": step, "decode": [], "operators": {}})
    assert dealt_prefill.splitlines()[3].split()[-3:] == ["1.000", "20", "0.25"]
