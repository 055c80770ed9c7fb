"""Dealing ahead vs on demand: rounds and seconds of a private SmolLM2 token, side by side.

Runs ``generate`` on the embedded SmolLM2 (all 30 layers) with the TTP, once per dealing,
back to back in one process (the machine is shared and noisy: compare the ratio, not the
seconds). Per mean decode step: the rounds that wait on the network (all of them),
the online rounds between the parties, the dealer's messages and bytes, the offline
seconds (party 0's dry run and the dealing) and the wall seconds of the step.

    python benchmarks/offline_dealing.py --new-tokens 4 --cache full,mpcache \
        --json results/offline_dealing.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crypten_mpcache.private import private_generate
from crypten_mpcache.runtime.report import MIB

KEYS = ("bytes", "rounds", "seconds", "dealer_bytes", "dealer_rounds", "dealer_seconds")


def measure(dealing: str, cache: str, new_tokens: int) -> dict:
    result = private_generate(max_new_tokens=new_tokens, dealing=dealing, cache=cache,
                              progress=False)
    steps = result.cost["decode"]
    mean = {k: sum(s[k] for s in steps) / len(steps) for k in KEYS}
    return {"dealing": dealing, "cache": cache, "new_tokens": new_tokens,
            "generated_ids": result.generated_ids, "decode_mean": mean,
            "online_rounds": mean["rounds"] - mean["dealer_rounds"],
            "online_bytes": mean["bytes"] - mean["dealer_bytes"],
            "prefill": result.cost["prefill"], "setup": result.cost["setup"],
            "wall_seconds": result.seconds}


def _print_row(row: dict) -> None:
    m = row["decode_mean"]
    print(f"{row['cache']:>8} {row['dealing']:>10} {m['rounds']:>8.0f} "
          f"{row['online_rounds']:>8.0f} {m['dealer_rounds']:>8.0f} "
          f"{m['dealer_bytes'] / MIB:>10.1f} {row['online_bytes'] / MIB:>10.1f} "
          f"{m['dealer_seconds']:>9.2f} {m['seconds']:>9.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=4,
                        help="generated tokens (decode steps = new tokens - 1; >= 2)")
    parser.add_argument("--cache", default="full", help="comma list: full, mpcache, ...")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (at least one decode step)")
    print(f"{'cache':>8} {'dealing':>10} {'rounds':>8} {'online':>8} {'dealer':>8} "
          f"{'dealer MiB':>10} {'online MiB':>10} {'offline s':>9} {'step s':>9}")
    rows = []
    for cache in args.cache.split(","):
        pair = {}
        for dealing in ("on-demand", "ahead"):
            pair[dealing] = measure(dealing, cache, args.new_tokens)
            rows.append(pair[dealing])
            _print_row(pair[dealing])
        slow, fast = pair["on-demand"]["decode_mean"], pair["ahead"]["decode_mean"]
        same = pair["on-demand"]["generated_ids"] == pair["ahead"]["generated_ids"]
        print(f"{cache}: rounds waiting on the network per step {slow['rounds']:.0f} -> "
              f"{fast['rounds']:.0f} ({slow['rounds'] / fast['rounds']:.2f}x); seconds per "
              f"step {slow['seconds']:.2f} -> {fast['seconds']:.2f} "
              f"({slow['seconds'] / fast['seconds']:.2f}x); same tokens: {same}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
