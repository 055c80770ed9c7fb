"""Modeled online latency of one private token of a whole model, from measured parts.

Why: ``bench`` measures decoder layers (its vocabulary is small on purpose), so the
per-token figure of a 32-layer model needs the layer's measured online rounds, bytes and
compute times the depth, plus the argmax over the real vocabulary, measured here under
MPC with the same comparison protocol (TTP, dealt ahead). Each is turned into seconds
with the README's LAN and WAN profiles (``runtime.network``): compute + rounds x RTT +
bytes one party sends / bandwidth, and the link's part alone (rounds x RTT + bytes /
bandwidth: the measured compute of a shared machine varies between runs). The LM head's
product is left out (one premasked product: one round, the hidden vector's bytes).

    python benchmarks/modeled_latency.py --bench before=results/bench/a.json \
        --bench after=results/bench/b.json --cache mpcache --vocab 32000 \
        --json results/bench/modeled_latency.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.network import PROFILES


def _argmax_party(vocab: int, seed: int) -> dict[str, float]:
    """One argmax over ``vocab`` random logits, its online cost (dealer traffic apart)."""
    import crypten

    from crypten_mpcache.runtime.cost import CostMeter
    from crypten_mpcache.runtime.offline import deal_ahead
    from crypten_mpcache.secure.functions.tournament import argmax_onehot

    logits = torch.randn(1, 1, vocab, generator=torch.Generator().manual_seed(seed)) * 8
    x = crypten.cryptensor(logits, src=0)
    meter = CostMeter()
    with meter.phase("argmax"):
        deal_ahead("argmax", lambda: argmax_onehot(x, dim=-1, bound_log2=13))
    phase = meter.report()["phases"][0]
    return {key: float(phase[key]) for key in ("bytes", "rounds", "seconds", "dealer_bytes",
                                               "dealer_rounds", "dealer_seconds")}


def argmax_cost(comparison: str, vocab: int, dcf_max_elements: int) -> dict[str, float]:
    """Online rounds, bytes per party and seconds of the argmax (max over the parties)."""
    config = LaunchConfig(parties=2, dealer="ttp", comparison=comparison,
                          dcf_max_elements=dcf_max_elements, timeout_s=1800)
    parties = launch(_argmax_party, vocab, 0, config=config)
    online = [{"rounds": p["rounds"] - p["dealer_rounds"],
               "bytes": p["bytes"] - p["dealer_bytes"],
               "seconds": p["seconds"] - p["dealer_seconds"]} for p in parties]
    return {"rounds": max(o["rounds"] for o in online),
            "bytes_per_party": max(o["bytes"] for o in online),
            "seconds": max(o["seconds"] for o in online),
            "dealer_bytes": sum(p["dealer_bytes"] for p in parties)}


def _row(bench: dict[str, Any], cache: str) -> dict[str, Any]:
    rows = [r for r in bench["rows"] if r["cache"] == cache]
    if not rows:
        raise SystemExit(f"modeled_latency: no {cache!r} row in the bench JSON")
    return rows[0]


def model_token(row: dict[str, Any], argmax: dict[str, float], depth: int
                ) -> dict[str, Any]:
    """Per-token online figures of ``depth`` layers like ``row`` plus the argmax."""
    layers = row["layers"] * row["steps"]
    rounds = row["online_rounds"] / layers * depth + argmax["rounds"]
    per_party = row["online_bytes"] / row["parties"] / layers * depth + argmax["bytes_per_party"]
    compute = row["online_seconds"] / layers * depth + argmax["seconds"]
    out: dict[str, Any] = {"layer_online_rounds": row["online_rounds"] / layers,
                           "rounds": rounds, "bytes_per_party": per_party,
                           "compute_seconds": compute,
                           "dealer_bytes": row["dealer_bytes"] / layers * depth
                           + argmax["dealer_bytes"]}
    for name, profile in PROFILES.items():
        out[f"{name.lower()}_seconds"] = profile.latency(compute, rounds, per_party)
        # the link alone: the measured compute of a shared machine is noise between runs
        out[f"{name.lower()}_network_seconds"] = profile.latency(0.0, rounds, per_party)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="append", required=True,
                        help="label=path of a bench JSON (one layer rows); repeat")
    parser.add_argument("--cache", default="mpcache")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for item in args.bench:
        label, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            parser.error(f"--bench wants label=path of a bench JSON, got {item!r}")
        row = _row(json.loads(Path(path).read_text()), args.cache)
        limit = int(row.get("dcf_max_elements", LaunchConfig.dcf_max_elements))
        argmax = argmax_cost(row["comparison"], args.vocab, limit)
        results[label] = {"bench": path, "comparison": row["comparison"], "argmax": argmax,
                          "token": model_token(row, argmax, args.depth)}
        token = results[label]["token"]
        print(f"{label:>8} ({row['comparison']}): {token['rounds']:,.0f} online rounds "
              f"({token['layer_online_rounds']:.0f} per layer + argmax "
              f"{argmax['rounds']:.0f}), {token['bytes_per_party'] / 2**20:,.0f} MiB per "
              f"party, LAN {token['lan_seconds']:.1f} s ({token['lan_network_seconds']:.1f} "
              f"on the link), WAN {token['wan_seconds']:.1f} s "
              f"({token['wan_network_seconds']:.1f}), "
              f"dealer {token['dealer_bytes'] / 2**20:,.0f} MiB", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"cache": args.cache, "vocab": args.vocab,
                                         "depth": args.depth, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
