"""The bench's transcript per operator: bytes and rounds of a tiny layer, every protocol.

One decode step of the tiny shape (1 layer, TTP dealt ahead, 5%) at 512 and 2048 tokens,
full cache and MPCache, under masked, dcf, hybrid (default threshold) and hybrid at 256
elements; bytes and rounds are exact, so two commits' files compare line by line:

    python benchmarks/bench_transcript.py results/fss5/transcript_tiny_after.json
"""

from __future__ import annotations

import json
import sys

import crypten_mpcache  # noqa: F401  (CrypTen's torch 2.x fixes first)
from crypten_mpcache.bench.runner import BenchConfig, run_bench

RUNS = [("masked", "masked", {}), ("dcf", "dcf", {}), ("hybrid", "hybrid", {}),
        ("hybrid256", "hybrid", {"dcf_max_elements": 256})]


def transcript() -> dict:
    out = {}
    for label, comparison, extra in RUNS:
        for context in (512, 2048):
            config = BenchConfig(shape="tiny", layers=1, contexts=(context,),
                                 caches=("full", "mpcache"), dealer="ttp", steps=1,
                                 budget=0.05, comparison=comparison, **extra)
            for row in run_bench(config).rows:
                out[f"{label}/{context}/{row['cache']}"] = {
                    "online_rounds": row["online_rounds"], "online_bytes": row["online_bytes"],
                    "dealer_bytes": row["dealer_bytes"],
                    "operators": {k: [v["bytes"], v["rounds"]]
                                  for k, v in row["operators"].items()}}
            print(label, context, flush=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/bench_transcript.py OUT.json")
    with open(sys.argv[1], "w") as f:
        json.dump(transcript(), f, indent=1, sort_keys=True)
