"""Selection fidelity: does MPC keep the tokens and clusters that plaintext MPCache keeps?

Both paths log one record per (phase, step, layer): which layer's selection it used
(index sharing), how many tokens it attended, the kept positions (prefill: static
eviction) and the selected clusters (decode). The MPC side produces them only in the
TEST/DEBUG mode that reveals selections (``secure.primitives.reveal.debug_reveal_selection``), which
a real run never enables. Fed the same tokens, both paths should agree except where two
candidates score within fixed-point noise of each other (a near-tie), so the report
counts agreements instead of stopping at the first difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crypten_mpcache.config import MPCacheConfig
from crypten_mpcache.generation_party import CLIENT, PartyTask, generation_party
from crypten_mpcache.runtime.launcher import launch

Key = tuple[str, int, int]  # (phase, step, layer)


@dataclass
class SelectionFidelity:
    """Agreement between secure and plaintext selection records.

    records: records compared; equal: records equal in every field; mismatches: (where,
    field) of each difference; overlap: mean Jaccard overlap of the selected finest
    clusters over the decode records that selected (1.0 = identical sets).
    """

    records: int = 0
    equal: int = 0
    mismatches: list[tuple[Key, str]] = field(default_factory=list)
    overlap: float = 1.0

    @property
    def all_equal(self) -> bool:
        return self.records > 0 and self.equal == self.records

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "equal": self.equal, "overlap": self.overlap,
                "mismatches": [{"phase": k[0], "step": k[1], "layer": k[2], "field": f}
                               for k, f in self.mismatches]}


def _key(record: dict[str, Any]) -> Key:
    return (str(record["phase"]), int(record["step"]), int(record["layer"]))


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Overlap of two selections given as index tensors (any matching shape)."""
    left, right = set(a.reshape(-1).tolist()), set(b.reshape(-1).tolist())
    union = left | right
    return 1.0 if not union else len(left & right) / len(union)


RECORD_FIELDS = ("selector", "cache", "attended", "positions", "clusters")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and torch.equal(a, b))
    return a == b


def _differences(secure: dict[str, Any], plain: dict[str, Any]) -> list[str]:
    """The fields of one record (``algorithm.engine.SelectionRecord``) that differ."""
    return [name for name in RECORD_FIELDS if not _same(secure[name], plain[name])]


def compare_selections(secure: list[dict[str, Any]], plain: list[dict[str, Any]]
                       ) -> SelectionFidelity:
    """Compare every secure record with the plaintext record of the same (phase, step,
    layer); a secure record without a plaintext twin is a mismatch ("missing")."""
    keyed = {_key(r): r for r in plain}
    report, overlaps = SelectionFidelity(), []
    for record in secure:
        where = _key(record)
        report.records += 1
        other = keyed.get(where)
        fields = ["missing"] if other is None else _differences(record, other)
        report.mismatches += [(where, f) for f in fields]
        report.equal += not fields
        if other is not None and record["phase"] == "decode" and \
                record["clusters"] is not None and other["clusters"] is not None:
            overlaps.append(_jaccard(record["clusters"], other["clusters"]))
    report.overlap = sum(overlaps) / len(overlaps) if overlaps else 1.0
    return report


def secure_records(folder: str | Path, prompt_ids: list[int], steps: int,
                   config: MPCacheConfig, launch_config: Any) -> dict[str, Any]:
    """Private generation with the selections revealed (DEBUG ONLY): the client's output
    of ``generation_party.generation_party`` (tokens, cost, reveals, selections)."""
    task = PartyTask(str(folder), tuple(prompt_ids), steps, True, "mpcache", False, False,
                     config, debug_selections=True)
    return launch(generation_party, task, config=launch_config)[CLIENT]
