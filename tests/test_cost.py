"""Cost accounting: exclusive operator scopes, phases, and the party merge rule."""

from __future__ import annotations

import pytest
import torch

from crypten_mpcache.runtime.cost import CostMeter, combine, operator_scope
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
    assert merged["phases"] == [{"phase": "prefill", "bytes": 15, "rounds": 4, "seconds": 1.0}]
    assert merged["operators"]["linear"] == {"bytes": 10, "rounds": 3, "seconds": 1.0}
    assert merged["operators"]["softmax"] == {"bytes": 5, "rounds": 4, "seconds": 0.5}


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
