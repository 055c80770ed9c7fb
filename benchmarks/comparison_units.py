"""Per-element bytes and per-call rounds of one secure comparison, per protocol and dealer.

The figures behind ``secure.functions.unit_costs.measured_units`` (which the top-k cost
model uses): one ``x < 0`` over 11,008 elements (a Llama-2-7B MLP width), 2 parties,
dealing on demand, CrypTen's counters, for party 0 (which also receives the TTP's
material) and party 1.

    python benchmarks/comparison_units.py [--elements N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, launch


def _party(elements: int) -> tuple[float, int]:
    import crypten
    import crypten.communicator as comm

    x = crypten.cryptensor(torch.randn(elements) * 10)
    channel = comm.get()
    before = channel.comm_bytes, channel.comm_rounds
    x._ltz()
    return (channel.comm_bytes - before[0]) / elements, channel.comm_rounds - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=11008)
    parser.add_argument("--protocols", default="masked,dcf")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args()
    rows = []
    for protocol in args.protocols.split(","):
        for dealer in ("tfp", "ttp"):
            config = LaunchConfig(dealer=dealer, comparison=protocol, dealing="on-demand",
                                  timeout_s=600)
            out = launch(_party, args.elements, config=config)
            for party in (0, 1):
                rows.append({"protocol": protocol, "dealer": dealer, "party": party,
                             "bytes_per_element": out[party][0], "rounds": out[party][1]})
                print(f"{protocol:7s} {dealer} party {party}: {out[party][0]:8.2f} bytes per "
                      f"element, {out[party][1]} rounds")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"elements": args.elements, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
