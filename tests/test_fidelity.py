"""compare_selections: record-by-record agreement of secure and plaintext selections."""

from __future__ import annotations

import torch

from crypten_mpcache.fidelity import compare_selections


def _prefill(layer: int, kept: list[int], selector: int | None = None) -> dict:
    positions = torch.tensor([[kept]])
    return {"phase": "prefill", "step": 0, "layer": layer, "selector": layer
            if selector is None else selector, "attended": len(kept), "cache": len(kept),
            "positions": positions, "clusters": None}


def _decode(layer: int, clusters: list[int] | None, attended: int = 8) -> dict:
    return {"phase": "decode", "step": 1, "layer": layer, "selector": layer,
            "attended": attended, "cache": 40, "positions": torch.arange(attended),
            "clusters": None if clusters is None else torch.tensor([clusters])}


def test_identical_records_agree() -> None:
    records = [_prefill(0, [0, 1, 5]), _decode(0, [0, 2, 3]), _decode(1, None)]
    report = compare_selections(records, records)
    assert report.all_equal and report.records == 3 and report.overlap == 1.0
    assert report.as_dict()["mismatches"] == []


def test_every_kind_of_difference_is_named() -> None:
    plain = [_prefill(0, [0, 1, 5]), _prefill(1, [0, 1, 5]), _decode(0, [0, 2, 3]),
             _decode(1, [0, 1, 3]), _decode(2, [0, 1])]
    secure = [_prefill(0, [0, 1, 6]), _prefill(1, [0, 1, 5], selector=0),
              _decode(0, [0, 2, 4]), _decode(1, [0, 1, 3], attended=9), _decode(2, None),
              _decode(3, [0])]
    report = compare_selections(secure, plain)
    fields = [f for _, f in report.mismatches]
    assert fields == ["positions", "selector", "clusters", "attended", "positions", "clusters",
                      "missing"]
    assert report.equal == 0 and not report.all_equal
    # decode overlaps: {0,2,3} vs {0,2,4} = 2/4, {0,1,3} vs itself = 1
    assert abs(report.overlap - 0.75) < 1e-9
    assert report.as_dict()["mismatches"][0] == {"phase": "prefill", "step": 0, "layer": 0,
                                                  "field": "positions"}


def test_no_records_is_not_agreement() -> None:
    assert not compare_selections([], []).all_equal


def test_missing_positions_differ_from_recorded_ones() -> None:
    """Both backends record through the one engine, so a record without positions is a
    difference, never an implicit 'kept everything'."""
    secure = _prefill(0, [0, 1, 2])
    secure["positions"] = None
    report = compare_selections([secure], [_prefill(0, [0, 1, 2])])
    assert [f for _, f in report.mismatches] == ["positions"]
