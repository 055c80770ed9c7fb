"""Peak memory of ONE large dcf comparison: each party, party 0's dry run, the dealer.

One comparison [x < 0] of n random values, 2 parties and the TTP, dealt ahead; checks the
result against plaintext and reports each party's costs and peak resident memory
(``ru_maxrss``: the party itself, its waited-for children, i.e. party 0's dry run; and the
largest of all processes, the dealer included).

    python benchmarks/dcf_memory.py --elements 1000000 4000000 --json results/bench/dcf_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch


def _party(n: int) -> dict[str, Any]:
    import crypten.communicator as comm
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from crypten_mpcache.runtime.cost import CostMeter
    from crypten_mpcache.runtime.offline import deal_ahead

    meter = CostMeter()
    values = torch.randint(-2 ** 62, 2 ** 62, (n,), generator=torch.Generator().manual_seed(1))

    def phase() -> bool:
        share = ArithmeticSharedTensor(values if comm.get().get_rank() == 0 else None,
                                       size=(n,), precision=0, src=0)
        bits = MPCTensor.from_shares(share.share, precision=0)._ltz().get_plain_text()
        return bool((bits.long() == (values < 0).long()).all())

    with meter.phase("comparison"):
        exact = deal_ahead("comparison", phase)
    cost = meter.report()["phases"][0]
    return {"exact": exact, **{k: cost[k] for k in ("bytes", "rounds", "dealer_bytes",
                                                    "dealer_rounds")},
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--elements", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for n in args.elements:
        start = time.perf_counter()
        parties = launch(_party, n, config=LaunchConfig(comparison="dcf", timeout_s=3600))
        row = {"elements": n, "seconds": time.perf_counter() - start, "parties": parties,
               "largest_process_maxrss_mb":
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}
        print(json.dumps(row))
        rows.append(row)
    if args.json:
        command = "python benchmarks/dcf_memory.py --elements " + " ".join(map(str, args.elements))
        Path(args.json).write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
