"""How far eviction alone can take the full / MPCache ratio, from measured bench rows.

Why: a decode step also pays for work that no eviction touches (linear layers, norms,
SiLU, the scores q K^T and the values p V on the premasked cache). Both caches pay it,
so it bounds the ratio whatever the selection costs. From one full row and one
MPCache row of the same run this splits each online step into

- ``shared``: every operator of the full row but its softmax;
- the full cache's softmax over all N tokens;
- MPCache's softmax over the attended tokens;
- MPCache's ``selection``: similarity, top-k, gather and its extra premasking;

and prints the measured ratio next to three ceilings: with the selection at its floor
(only the ``pick``, the one opening of the region's scores that picking columns of
q K^T by a secret one-hot needs: ``secure.cache.attended``), with a FREE selection
(``(shared + softmax_full) / (shared + softmax_attended)``) and with free attention on
the attended tokens too (``(shared + softmax_full) / shared``). Bytes, rounds and the
network-only WAN / LAN latency (rounds x RTT + per-party bytes / bandwidth) are exact
functions of the transcript, so the ceilings are too.

Usage: ``python -m crypten_mpcache.bench.bounds results/bench/X.json [...]``
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from crypten_mpcache.runtime.network import LAN, WAN, NetworkProfile
from crypten_mpcache.runtime.report import MIB

SELECTION = ("similarity", "topk", "gather", "pick")
NOT_SHARED = ("softmax", *SELECTION)


@dataclass(frozen=True)
class Split:
    """One online quantity (bytes summed over parties, or rounds) of a full / MPCache pair."""

    shared: float
    softmax_full: float
    softmax_attended: float
    selection: float  # the pick included
    pick: float = 0.0

    @property
    def full(self) -> float:
        return self.shared + self.softmax_full

    @property
    def cache(self) -> float:
        return self.shared + self.softmax_attended + self.selection

    def ratios(self) -> dict[str, float]:
        return {"measured": self.full / self.cache,
                "floor_selection": self.full / (self.shared + self.softmax_attended
                                                + self.pick),
                "free_selection": self.full / (self.shared + self.softmax_attended),
                "free_attention": self.full / self.shared}


def online(op: dict[str, Any], key: str) -> float:
    """An operator's ``key`` ("bytes" or "rounds") without the dealer's part."""
    return float(op.get(key, 0.0)) - float(op.get(f"dealer_{key}", 0.0))


def _shared(ops: dict[str, dict[str, Any]], key: str) -> float:
    return sum(online(op, key) for kind, op in ops.items() if kind not in NOT_SHARED)


def split(full: dict[str, Any], cache: dict[str, Any], key: str) -> Split:
    """The online ``key`` ("bytes" or "rounds") of a full and an MPCache row, split."""
    f_ops, c_ops = full["operators"], cache["operators"]
    shared = _shared(f_ops, key)
    selection = sum(online(c_ops[k], key) for k in SELECTION if k in c_ops)
    pick = online(c_ops["pick"], key) if "pick" in c_ops else 0.0
    return Split(shared, online(f_ops["softmax"], key), online(c_ops["softmax"], key),
                 selection + _shared(c_ops, key) - shared,  # e.g. MPCache's extra premasking
                 pick)


def latency_ratios(full: dict[str, Any], cache: dict[str, Any], profile: NetworkProfile
                   ) -> dict[str, float]:
    """The same three ratios for network-only latency under ``profile``: it is linear in
    rounds and bytes, so each part's seconds add up like its rounds and bytes."""
    parties = int(full["parties"])
    b, r = split(full, cache, "bytes"), split(full, cache, "rounds")

    def seconds(part: str) -> float:
        return profile.latency(0.0, getattr(r, part), getattr(b, part) / parties)

    return Split(*(seconds(f) for f in ("shared", "softmax_full", "softmax_attended",
                                        "selection", "pick"))).ratios()


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(full, mpcache) rows of the same shape, layers and context."""
    key = lambda r: (r["shape"], r["layers"], r["context"])  # noqa: E731
    full = {key(r): r for r in rows if r["cache"] == "full"}
    return [(full[key(r)], r) for r in rows if r["cache"] == "mpcache" and key(r) in full]


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| shape | context | quantity | shared | softmax full | softmax attended | "
           "selection | pick | measured | ceiling, selection at its floor (pick) | "
           "ceiling, free selection | ceiling, free attention |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for full, cache in pairs(rows):
        head = f"| {full['shape']} x{full['layers']} | {full['context']} "
        b = split(full, cache, "bytes")
        r = split(full, cache, "rounds")
        for name, s, scale in (("online MiB", b, MIB), ("online rounds", r, 1.0)):
            x = s.ratios()
            out.append(head + f"| {name} | {s.shared / scale:.2f} | {s.softmax_full / scale:.2f}"
                       f" | {s.softmax_attended / scale:.2f} | {s.selection / scale:.2f} | "
                       f"{s.pick / scale:.2f} | {x['measured']:.2f}x | "
                       f"{x['floor_selection']:.2f}x | {x['free_selection']:.2f}x | "
                       f"{x['free_attention']:.2f}x |")
        for profile in (LAN, WAN):
            x = latency_ratios(full, cache, profile)
            out.append(head + f"| {profile.name} net-only s | | | | | | {x['measured']:.2f}x | "
                       f"{x['floor_selection']:.2f}x | {x['free_selection']:.2f}x | "
                       f"{x['free_attention']:.2f}x |")
    return out


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[-1])
        return 2
    rows = [row for path in paths for row in json.load(open(path))["rows"]]
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
