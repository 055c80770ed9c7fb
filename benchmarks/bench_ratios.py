"""full/cache ratios of bench result JSONs, including "network-only" LAN/WAN latency.

Online columns (rows measured since the online/dealer split): the same without the
dealer's traffic. The bench report's LAN/WAN ratios include the measured compute
seconds, which are noisy on a shared machine. Network-only latency = rounds x RTT +
per-party bytes / bandwidth (the same profiles, `crypten_mpcache.runtime.network`),
computed from the measured rows.

Usage: python benchmarks/bench_ratios.py results/bench/llama2-7b.json [...]
"""

from __future__ import annotations

import json
import sys

from crypten_mpcache.runtime.network import LAN, WAN

MIB = 1024 * 1024


def net_only(row: dict, profile) -> float:
    return profile.latency(0.0, row["rounds"], row["bytes_per_party"])


def online_net_only(row: dict, profile) -> float:
    return profile.latency(0.0, row["online_rounds"], row["online_bytes_per_party"])


def main(paths: list[str]) -> None:
    print("| file | context | cache | MiB/step | rounds | bytes | rounds | LAN | WAN "
          "| net-only LAN | net-only WAN | online bytes | online rounds | online net-only "
          "LAN | online net-only WAN | one-time MiB / rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        rows = json.load(open(path))["rows"]
        full = {r["context"]: r for r in rows if r["cache"] == "full"}
        for r in rows:
            b = full.get(r["context"])
            cells = [path.rsplit("/", 1)[-1], str(r["context"]), r["cache"],
                     f"{r['bytes'] / MIB:.2f}", str(int(r["rounds"]))]
            if b is None:
                cells += ["-"] * 10
            else:
                cells += [f"{b['bytes'] / r['bytes']:.2f}x",
                          f"{b['rounds'] / r['rounds']:.2f}x",
                          f"{b['lan_seconds'] / r['lan_seconds']:.2f}x",
                          f"{b['wan_seconds'] / r['wan_seconds']:.2f}x",
                          f"{net_only(b, LAN) / net_only(r, LAN):.2f}x",
                          f"{net_only(b, WAN) / net_only(r, WAN):.2f}x"]
                if "online_bytes" in r and "online_bytes" in b:
                    cells += [f"{b['online_bytes'] / r['online_bytes']:.2f}x",
                              f"{b['online_rounds'] / r['online_rounds']:.2f}x",
                              f"{online_net_only(b, LAN) / online_net_only(r, LAN):.2f}x",
                              f"{online_net_only(b, WAN) / online_net_only(r, WAN):.2f}x"]
                else:
                    cells += ["-"] * 4
            cells.append(f"{r['static_bytes'] / MIB:.2f} / {int(r['static_rounds'])}")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
