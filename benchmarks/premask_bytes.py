"""Bytes and rounds per decode step of SmolLM2's linear layers, with and without premasking.

Runs every distinct linear product of one decode step (one token) at SmolLM2-135M's real
shapes under ``launch`` with CrypTen's communication counters, for each dealer: once with
CrypTen's Beaver product (the operand is re-opened every call) and once with premasked
operands (opened once at setup, then only the activation is opened). The per-step total is
``layers`` x (the seven per-layer products) + the tied embedding (one-hot @ E) + the LM
head (h @ E^T, the same premasked E transposed). Bytes are summed over parties (each
party counts its own traffic), rounds are the maximum over parties.

    python benchmarks/premask_bytes.py --out runs/premask_bytes.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import crypten_mpcache  # noqa: F401  (CrypTen compatibility patches before crypten)
from crypten_mpcache.runtime.launcher import DEALERS, LaunchConfig, launch
from crypten_mpcache.secure import premask


@dataclass(frozen=True)
class SmolLM2Shapes:
    """The shapes that decide a decode step's linear-layer traffic (SmolLM2-135M)."""

    hidden: int = 576
    q_out: int = 576
    kv_out: int = 192
    mlp: int = 1536
    vocab: int = 49152
    layers: int = 30

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1:
            raise ValueError(f"every shape must be positive: {self}")

    def layer_products(self) -> dict[str, tuple[int, int]]:
        """Per-layer weight shapes (in, out): a decode step multiplies (1, in) by each."""
        h = self.hidden
        return {"q_proj": (h, self.q_out), "k_proj": (h, self.kv_out),
                "v_proj": (h, self.kv_out), "o_proj": (self.q_out, h),
                "gate_proj": (h, self.mlp), "up_proj": (h, self.mlp),
                "down_proj": (self.mlp, h)}


@dataclass(frozen=True)
class BenchConfig:
    shapes: SmolLM2Shapes = field(default_factory=SmolLM2Shapes)
    parties: int = 2
    dealers: tuple[str, ...] = DEALERS
    repeats: int = 2  # products per operand: the per-call cost must not change

    def __post_init__(self) -> None:
        if self.parties not in (2, 3):
            raise ValueError("parties must be 2 or 3")
        if not self.dealers or any(d not in DEALERS for d in self.dealers):
            raise ValueError(f"dealers must be a non-empty subset of {DEALERS}")
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")


def _counters() -> tuple[float, int, float]:
    import crypten.communicator as comm

    c = comm.get()
    return c.comm_bytes, c.comm_rounds, time.perf_counter()


def _measure(fn) -> tuple[object, dict]:
    start = _counters()
    result = fn()
    end = _counters()
    return result, {"bytes": int(end[0] - start[0]), "rounds": int(end[1] - start[1]),
                    "seconds": end[2] - start[2]}


def _product_costs(name: str, weight_shape: tuple[int, int], x_shape: tuple[int, int],
                   premask_on: bool, repeats: int, transpose: bool = False) -> dict:
    """One party: create the operand (setup) and multiply fresh activations by it."""
    import crypten

    weight = crypten.cryptensor(torch.randn(weight_shape) / weight_shape[0] ** 0.5)
    operand, setup = _measure(lambda: premask.fixed_operand(weight, name=name,
                                                            premask=premask_on))
    if transpose:
        operand = operand.transpose(0, 1)
    calls = []
    for _ in range(repeats):
        x = crypten.cryptensor(torch.randn(x_shape), src=1)
        _, cost = _measure(lambda x=x: operand.rmatmul(x))
        calls.append(cost)
    if len({(c["bytes"], c["rounds"]) for c in calls}) != 1:
        raise AssertionError(f"{name}: per-call traffic changed between calls: {calls}")
    return {"setup": setup, "call": calls[-1]}


def _run_products(products: dict[str, dict], premask_on: bool, repeats: int) -> dict:
    return {name: _product_costs(name, spec["weight"], spec["x"], premask_on, repeats,
                                 spec.get("transpose", False))
            for name, spec in products.items()}


def _products(shapes: SmolLM2Shapes) -> dict[str, dict]:
    products = {name: {"weight": (k, n), "x": (1, k)}
                for name, (k, n) in shapes.layer_products().items()}
    embedding = (shapes.vocab, shapes.hidden)
    products["embedding"] = {"weight": embedding, "x": (1, shapes.vocab)}  # one-hot @ E
    products["lm_head"] = {"weight": embedding, "x": (1, shapes.hidden), "transpose": True}
    return products


def _combine(per_party: list[dict]) -> dict:
    """Bytes summed over parties, rounds and seconds the maximum (as cost.combine)."""
    return {"bytes": sum(p["bytes"] for p in per_party),
            "rounds": max(p["rounds"] for p in per_party),
            "seconds": max(p["seconds"] for p in per_party)}


def _per_step(costs: dict[str, dict], shapes: SmolLM2Shapes, kind: str) -> dict:
    """A decode step: layers x the per-layer products + embedding + LM head."""
    total = {"bytes": 0, "rounds": 0, "seconds": 0.0}
    for name, cost in costs.items():
        count = shapes.layers if name in shapes.layer_products() else 1
        for key in total:
            total[key] += count * cost[kind][key]
    return total


def _one_time(costs: dict[str, dict], shapes: SmolLM2Shapes) -> dict:
    """Setup of every operand once (the tied E counts once: embedding and LM head share)."""
    once = {k: v for k, v in costs.items() if k != "lm_head"}
    return _per_step(once, shapes, "setup")


def run(config: BenchConfig) -> dict:
    products = _products(config.shapes)
    result: dict = {"config": asdict(config), "dealers": {}}
    for dealer in config.dealers:
        launch_config = LaunchConfig(parties=config.parties, dealer=dealer, timeout_s=3600)
        entry: dict = {}
        for label, premask_on in (("plain", False), ("premask", True)):
            # one launch per product keeps the peak memory to one operand per process
            per_product = {}
            for name, spec in products.items():
                parties = launch(_run_products, {name: spec}, premask_on, config.repeats,
                                 config=launch_config)
                per_product[name] = {
                    kind: _combine([p[name][kind] for p in parties])
                    for kind in ("setup", "call")}
                per_product[name]["party0_call_bytes"] = parties[0][name]["call"]["bytes"]
            entry[label] = {"products": per_product,
                            "per_step": _per_step(per_product, config.shapes, "call"),
                            "one_time": _one_time(per_product, config.shapes)}
        plain, pre = entry["plain"]["per_step"], entry["premask"]["per_step"]
        entry["ratio_bytes_per_step"] = plain["bytes"] / pre["bytes"]
        entry["ratio_rounds_per_step"] = plain["rounds"] / pre["rounds"]
        result["dealers"][dealer] = entry
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:10.2f}"


def print_report(result: dict) -> None:
    shapes = result["config"]["shapes"]
    print(f"SmolLM2 linear layers per decode step ({shapes['layers']} layers, "
          f"{result['config']['parties']} parties; bytes summed over parties)")
    for dealer, entry in result["dealers"].items():
        print(f"\n== dealer {dealer.upper()} ==")
        print(f"{'product':<11} {'plain MiB':>10} {'rounds':>6} {'premask MiB':>11} "
              f"{'rounds':>6} {'setup MiB':>10}")
        for name, plain in entry["plain"]["products"].items():
            pre = entry["premask"]["products"][name]
            print(f"{name:<11} {_mib(plain['call']['bytes'])} {plain['call']['rounds']:>6} "
                  f"{_mib(pre['call']['bytes']):>11} {pre['call']['rounds']:>6} "
                  f"{_mib(pre['setup']['bytes'])}")
        plain, pre = entry["plain"]["per_step"], entry["premask"]["per_step"]
        print(f"per step:   plain {_mib(plain['bytes'])} MiB, {plain['rounds']} rounds | "
              f"premask {_mib(pre['bytes'])} MiB, {pre['rounds']} rounds | "
              f"bytes ratio {entry['ratio_bytes_per_step']:.1f}x, "
              f"rounds ratio {entry['ratio_rounds_per_step']:.2f}x")
        print(f"one-time premask setup (all weights opened once): "
              f"{_mib(entry['premask']['one_time']['bytes'])} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--dealers", nargs="+", default=list(DEALERS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/premask_bytes.json"))
    args = parser.parse_args(argv)
    config = BenchConfig(parties=args.parties, dealers=tuple(args.dealers),
                         repeats=args.repeats)
    result = run(config)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
