"""Retention: the fraction of the full cache's correct answers a method keeps.

Hand-made prediction records (no model): a method right on 2 of the 3 samples the full
cache answers correctly has retention 2/3 with the Wilson interval of 2/3; a sample the
full cache misses does not count, right or wrong; without a full-cache row there is no
retention; the outcomes JSON round-trips; the report prints retention beside raw accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crypten_mpcache.eval import metrics, report, retention
from crypten_mpcache.eval.runner import aggregate


def _rec(method: str, budget: float | None, index: int, value: float, task: str = "passkey",
         query_at: str = "prefill", context: int = 2048) -> dict[str, Any]:
    return {"key": f"{task}|{context}|{index}|{query_at}|{method}|{budget}", "task": task,
            "index": index, "context": context, "tokens": context, "query_at": query_at,
            "method": method, "budget": budget, "meta": {"depth": index / 10},
            "answer": f"{10000 + index}", "value": value}


# full: right on 0, 1, 2; wrong on 3.  quest 0.2: right on 0, 1 (of 0-2) and on 3, which
# the full cache misses; raw accuracy 3/4 but retention 2/3.
RECORDS = ([_rec("full", None, i, v) for i, v in enumerate([1, 1, 1, 0])]
           + [_rec("quest", 0.2, i, v) for i, v in enumerate([1, 1, 0, 1])]
           + [_rec("quest", 0.5, i, v) for i, v in enumerate([1, 1, 1, 0])])


def _row(rows: list[dict[str, Any]], method: str, budget: float) -> dict[str, Any]:
    (row,) = [r for r in rows if r["method"] == method and r["budget"] == budget]
    return row


def test_retention_counts_only_full_correct_samples() -> None:
    rows = retention.retention_rows(retention.outcomes_of_records(RECORDS))
    row = _row(rows, "quest", 0.2)
    assert (row["kept"], row["n"], row["full_correct"]) == (2, 3, 3)
    assert row["retention"] == pytest.approx(2 / 3)
    low, high = metrics.wilson_interval(2, 3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert (low, high) == pytest.approx((0.2077, 0.9385), abs=1e-4)
    # Raw accuracy of the same cell counts sample 3 too: 3/4.
    raw = _row(aggregate(RECORDS), "quest", 0.2)
    assert raw["score"] == pytest.approx(0.75)
    full_row = _row(rows, "quest", 0.5)  # right on every full-correct sample, wrong on 3
    assert (full_row["kept"], full_row["n"], full_row["retention"]) == (3, 3, 1.0)
    assert retention.retention_parity(rows) == {("passkey", 2048, "prefill", "quest"): 0.5}


def test_no_full_row_no_retention_and_samples_pair_by_identity() -> None:
    no_full = [r for r in RECORDS if r["method"] != "full"]
    rows = retention.retention_rows(retention.outcomes_of_records(no_full))
    assert all(r["retention"] is None and r["n"] == 0 and r["why"] == "no full-cache row"
               for r in rows)
    assert retention.retention_parity(rows) == {}
    # Another sample under the same index (other seed): it does not pair with the full run.
    other = [{**r, "answer": "99999"} for r in RECORDS if r["method"] == "quest"]
    full = [r for r in RECORDS if r["method"] == "full"]
    rows = retention.retention_rows(retention.outcomes_of_records(full + other))
    assert all(r["retention"] is None for r in rows)
    assert rows[0]["why"] == "the full cache answers none of these samples"
    # ppl has no retention; needle counts as right only at F1 >= NEEDLE_F1.
    assert retention.outcomes_of_records([{**RECORDS[0], "task": "ppl"}]) == {}
    assert retention.is_correct("needle", 1.0) and not retention.is_correct("needle", 0.8)


def test_outcomes_json_round_trip(tmp_path: Path) -> None:
    outcomes = retention.outcomes_of_records(RECORDS)
    data = retention.to_json(outcomes, {c: "run-a" for c in outcomes})
    assert data["cells"][0]["outcomes"] == "1110" and data["cells"][0]["run"] == "run-a"
    path = tmp_path / "retention.json"
    path.write_text(json.dumps(data))
    assert retention.load_outcomes([path]) == outcomes
    assert report.load_rows([path]) == []  # an outcomes JSON holds no score rows
    clash = {**outcomes, ("passkey", 2048, "chunk", "full", 1.0): {"0:deadbeef": True}}
    with pytest.raises(ValueError, match="differs between the inputs"):
        retention.to_json(clash)


def test_report_prints_retention_beside_raw_accuracy(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    sources = [folder]
    md = report.markdown(report.load_rows(sources), "cmd",
                         outcomes=retention.load_outcomes(sources))
    assert "| quest | 0.75 [" in md  # raw accuracy of quest at 0.2 ...
    assert "| quest | 0.67 (2/3) [0.21, 0.94] | 1.00 (3/3) [0.44, 1.00] |" in md  # ... retention
    assert "Budget-to-parity on retention" in md
    assert "| passkey | 2048 | prefill | 0.5 |" in md
    # Rows only (no per-sample outcomes): the page says so instead of guessing.
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"rows": aggregate(RECORDS)}))
    md = report.markdown(report.load_rows([summary]), "cmd",
                         outcomes=retention.load_outcomes([summary]))
    assert "no per-sample outcomes in these inputs" in md
    # Outcomes without the full cache's: no retention, said in the table.
    no_full = [r for r in RECORDS if r["method"] != "full"]
    md = report.markdown(aggregate(RECORDS), "cmd",
                         outcomes=retention.outcomes_of_records(no_full))
    assert "none (no full-cache row)" in md
