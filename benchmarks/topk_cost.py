"""Measured cost of each secure top-k protocol, and the cost model fitted to it.

For every G in {8, 16, 32, 64, 128} and k in {2, 4, ...} (k <= G/2), 2 parties, each
dealer (TFP and TTP): per-party bytes, rounds and seconds of ``topk_onehot`` on one
score vector, plus the unit costs of one batched comparison and one multiplication.
The unit costs are fitted (least squares) from the protocols' counts, and the model's
choice under LAN and WAN is printed.

    python benchmarks/topk_cost.py --out results/topk_cost.json [--dealers tfp ttp]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import crypten_mpcache  # noqa: F401
from crypten_mpcache.runtime.launcher import LaunchConfig, launch
from crypten_mpcache.runtime.network import PROFILES
from crypten_mpcache.secure.functions import topk, topk_cost, unit_costs


def grid(max_g: int) -> list[tuple[int, int]]:
    cells = []
    g = 8
    while g <= max_g:
        k = 2
        while k <= g // 2:
            cells.append((g, k))
            k *= 2
        g *= 2
    return cells


def _measure(fn) -> dict[str, float]:
    import crypten.communicator as comm

    c = comm.get()
    b0, r0, t0 = c.comm_bytes, c.comm_rounds, time.perf_counter()
    fn()
    return {"bytes": float(c.comm_bytes - b0), "rounds": int(c.comm_rounds - r0),
            "seconds": time.perf_counter() - t0}


def party_job(cells: list[tuple[int, int]], protocols: tuple[str, ...]) -> dict:
    import crypten

    torch.manual_seed(0)
    x = crypten.cryptensor(torch.randn(4096))
    y = crypten.cryptensor(torch.randn(4096))
    units = {"cmp_4096": _measure(lambda: x.ge(y)), "mul_4096": _measure(lambda: x * y)}
    rows = []
    for g, k in cells:
        scores = crypten.cryptensor(torch.randn(g))
        for protocol in protocols:
            cost = _measure(lambda s=scores, kk=k, p=protocol: topk.topk_onehot(s, kk, p))
            rows.append({"G": g, "k": k, "protocol": protocol, **cost})
    return {"units": units, "rows": rows}


def fit_units(rows: list[dict]) -> unit_costs.UnitCosts:
    """Least-squares unit costs from measured rows and the protocols' counts."""
    counts = [topk_cost.protocol_counts(r["protocol"], r["G"], r["k"]) for r in rows]
    a = torch.tensor([[c.comparisons, c.multiplications] for c in counts], dtype=torch.float64)
    b = torch.tensor([r["bytes"] for r in rows], dtype=torch.float64)
    bytes_fit = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    a = torch.tensor([[c.comparison_rounds, c.multiplication_rounds] for c in counts],
                     dtype=torch.float64)
    b = torch.tensor([r["rounds"] for r in rows], dtype=torch.float64)
    rounds_fit = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return unit_costs.UnitCosts(float(bytes_fit[0]), float(rounds_fit[0]), float(bytes_fit[1]),
                          float(rounds_fit[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/topk_cost.json")
    parser.add_argument("--dealers", nargs="+", default=["tfp", "ttp"])
    parser.add_argument("--max-g", type=int, default=128)
    parser.add_argument("--comparison", default="masked", choices=("crypten", "masked"))
    args = parser.parse_args()
    cells = grid(args.max_g)
    report: dict = {"parties": 2, "bytes": "per party (party 0)", "dealers": {}}
    for dealer in args.dealers:
        results = launch(party_job, cells, topk.PROTOCOLS,
                         config=LaunchConfig(parties=2, dealer=dealer,
                                             comparison=args.comparison))
        rows = results[0]["rows"]
        units = fit_units(rows)
        config = topk_cost.TopKConfig(dealer=dealer, comparison=args.comparison,
                                 units={(dealer, args.comparison): units})
        print(f"\n== dealer {dealer.upper()} (2 parties, per-party bytes) ==")
        print(f"measured units (4096 elements): {results[0]['units']}")
        print(f"fitted units: {units}")
        print(f"{'G':>4} {'k':>3} {'protocol':>9} {'bytes':>10} {'pred':>10} {'rounds':>6} "
              f"{'pred':>6} {'sec':>6}")
        for row in rows:
            pb, pr = config.estimate(row["protocol"], row["G"], row["k"])
            row.update(pred_bytes=pb, pred_rounds=pr)
            print(f"{row['G']:>4} {row['k']:>3} {row['protocol']:>9} {row['bytes']:>10.0f} "
                  f"{pb:>10.0f} {row['rounds']:>6} {pr:>6.0f} {row['seconds']:>6.2f}")
        choices = {}
        for name, profile in PROFILES.items():
            choices[name] = {f"{g},{k}": topk_cost.choose_protocol(g, k, profile, config)
                             for g, k in cells}
            print(f"{name} choice: {choices[name]}")
        report["dealers"][dealer] = {"units_measured": results[0]["units"],
                                     "units_fitted": units.__dict__, "rows": rows,
                                     "choices": choices}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
