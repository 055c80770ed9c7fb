"""Bytes and rounds per decode step of SmolLM2's linear layers, with and without premasking.

Runs every distinct linear product of one decode step (one token) at SmolLM2-135M's real
shapes under ``launch`` with CrypTen's communication counters, for each dealer: once with
CrypTen's Beaver product (the operand is re-opened every call) and once with premasked
operands (opened once at setup, then only the activation is opened). The per-step total is
``layers`` x (the seven per-layer products) + the tied embedding (one-hot @ E) + the LM
head (h @ E^T, the same premasked E transposed). With ``--context N`` it also measures
q @ K^T and p @ V over an N-row encrypted KV cache (premasked: each new K/V row is opened
once when written). Bytes are summed over parties (each party counts its own traffic),
rounds are the maximum over parties. Seconds are wall time on a shared machine: noisy.

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
from crypten_mpcache.secure.primitives import premask


@dataclass(frozen=True)
class SmolLM2Shapes:
    """The shapes that decide a decode step's linear-layer traffic (SmolLM2-135M)."""

    hidden: int = 576
    q_out: int = 576
    kv_out: int = 192
    mlp: int = 1536
    vocab: int = 49152
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    head_dim: int = 64

    def __post_init__(self) -> None:
        if min(asdict(self).values()) < 1:
            raise ValueError(f"every shape must be positive: {self}")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")

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
    context: int = 1024  # KV-cache length for the attention products (0: skip them)

    def __post_init__(self) -> None:
        if self.parties not in (2, 3):
            raise ValueError("parties must be 2 or 3")
        if not self.dealers or any(d not in DEALERS for d in self.dealers):
            raise ValueError(f"dealers must be a non-empty subset of {DEALERS}")
        if self.repeats < 1:
            raise ValueError("repeats must be >= 1")
        if self.context < 0:
            raise ValueError("context must be >= 0")


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


def _product_costs(name: str, weight_shape: tuple[int, ...], x_shape: tuple[int, ...] | None,
                   premask_on: bool, repeats: int, transpose: bool = False) -> dict:
    """One party: create the operand (setup) and multiply fresh activations by it."""
    import crypten

    weight = crypten.cryptensor(torch.randn(weight_shape) / weight_shape[-2] ** 0.5)
    if x_shape is None:  # setup only: the new K and V rows of a step, opened together
        return {"setup": _kv_rows_setup(name, weight, premask_on),
                "call": {"bytes": 0, "rounds": 0, "seconds": 0.0}}
    operand, setup = _measure(lambda: premask.fixed_operand(weight, name=name,
                                                            premask=premask_on))
    if transpose:
        operand = operand.transpose(-1, -2)
    calls = []
    for _ in range(repeats):
        x = crypten.cryptensor(torch.randn(x_shape), src=1)
        _, cost = _measure(lambda x=x: operand.rmatmul(x))
        calls.append(cost)
    if len({(c["bytes"], c["rounds"]) for c in calls}) != 1:
        raise AssertionError(f"{name}: per-call traffic changed between calls: {calls}")
    return {"setup": setup, "call": calls[-1]}


def _kv_rows_setup(name: str, row, premask_on: bool) -> dict:
    names = [f"{name}/k", f"{name}/v"]
    if premask_on:
        _, cost = _measure(lambda: premask.FixedOperand.create_many([row, row.clone()],
                                                                    names=names))
    else:
        _, cost = _measure(lambda: [premask.PlainOperand.create(row, name=n) for n in names])
    return cost


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


def _attention_products(shapes: SmolLM2Shapes, context: int) -> dict[str, dict]:
    """Per-layer q @ K^T and p @ V over a cache of ``context`` rows (GQA: the query heads
    of a KV head form the rows of x), and the new K (or V) row that each step writes."""
    kv, group, d = shapes.kv_heads, shapes.heads // shapes.kv_heads, shapes.head_dim
    return {"attn_scores": {"weight": (kv, context, d), "x": (kv, group, d),
                            "transpose": True},
            "attn_values": {"weight": (kv, context, d), "x": (kv, group, context)},
            "kv_row": {"weight": (kv, 1, d), "x": None}}  # K and V rows, one opening


def _attention_step(costs: dict[str, dict], shapes: SmolLM2Shapes, premask_on: bool) -> dict:
    """layers x (scores + values); premasking also opens the new K and V rows once
    (in one round, ``FixedOperand.create_many``)."""
    total = {"bytes": 0, "rounds": 0, "seconds": 0.0}
    for key in total:
        per_layer = costs["attn_scores"]["call"][key] + costs["attn_values"]["call"][key]
        if premask_on:
            per_layer += costs["kv_row"]["setup"][key]
        total[key] = shapes.layers * per_layer
    return total


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


def _measure_products(products: dict[str, dict], premask_on: bool, config: BenchConfig,
                      launch_config: LaunchConfig) -> dict[str, dict]:
    """One launch per product keeps the peak memory to one operand per process."""
    per_product = {}
    for name, spec in products.items():
        parties = launch(_run_products, {name: spec}, premask_on, config.repeats,
                         config=launch_config)
        per_product[name] = {kind: _combine([p[name][kind] for p in parties])
                             for kind in ("setup", "call")}
        per_product[name]["party0_call_bytes"] = parties[0][name]["call"]["bytes"]
    return per_product


def _ratios(plain: dict, pre: dict) -> dict:
    return {"bytes": plain["bytes"] / pre["bytes"], "rounds": plain["rounds"] / pre["rounds"]}


def run(config: BenchConfig) -> dict:
    linear = _products(config.shapes)
    attention = _attention_products(config.shapes, config.context) if config.context else {}
    result: dict = {"config": asdict(config), "dealers": {}}
    for dealer in config.dealers:
        launch_config = LaunchConfig(parties=config.parties, dealer=dealer, timeout_s=3600)
        entry: dict = {}
        for label, premask_on in (("plain", False), ("premask", True)):
            costs = _measure_products(linear, premask_on, config, launch_config)
            entry[label] = {"products": costs,
                            "per_step": _per_step(costs, config.shapes, "call"),
                            "one_time": _one_time(costs, config.shapes)}
            if attention:
                att = _measure_products(attention, premask_on, config, launch_config)
                entry[label]["attention_products"] = att
                entry[label]["attention_per_step"] = _attention_step(
                    att, config.shapes, premask_on)
        entry["ratio_per_step"] = _ratios(entry["plain"]["per_step"],
                                          entry["premask"]["per_step"])
        if attention:
            entry["attention_ratio_per_step"] = _ratios(
                entry["plain"]["attention_per_step"], entry["premask"]["attention_per_step"])
        result["dealers"][dealer] = entry
    return result


def _mib(n: float) -> str:
    return f"{n / 2**20:10.2f}"


def _print_table(plain: dict[str, dict], pre: dict[str, dict]) -> None:
    print(f"{'product':<12} {'plain MiB':>10} {'rounds':>6} {'premask MiB':>11} "
          f"{'rounds':>6} {'setup MiB':>10}")
    for name, base in plain.items():
        ours = pre[name]
        print(f"{name:<12} {_mib(base['call']['bytes'])} {base['call']['rounds']:>6} "
              f"{_mib(ours['call']['bytes']):>11} {ours['call']['rounds']:>6} "
              f"{_mib(ours['setup']['bytes'])}")


def _print_step(label: str, plain: dict, pre: dict, ratio: dict) -> None:
    print(f"{label}: plain {_mib(plain['bytes'])} MiB, {plain['rounds']} rounds, "
          f"{plain['seconds']:.1f} s | premask {_mib(pre['bytes'])} MiB, {pre['rounds']} "
          f"rounds, {pre['seconds']:.1f} s | bytes {ratio['bytes']:.1f}x less, "
          f"rounds ratio {ratio['rounds']:.2f}")


def print_report(result: dict) -> None:
    config = result["config"]
    print(f"SmolLM2 per decode step ({config['shapes']['layers']} layers, "
          f"{config['parties']} parties; bytes summed over parties, rounds and seconds "
          "the max over parties)")
    for dealer, entry in result["dealers"].items():
        plain, pre = entry["plain"], entry["premask"]
        print(f"\n== dealer {dealer.upper()}: linear layers + tied embedding / LM head ==")
        _print_table(plain["products"], pre["products"])
        _print_step("per step", plain["per_step"], pre["per_step"], entry["ratio_per_step"])
        print(f"one-time premask setup (all weights opened once): "
              f"{_mib(pre['one_time']['bytes'])} MiB")
        if "attention_products" in plain:
            print(f"-- attention over a {config['context']}-row KV cache (per layer; "
                  "kv_row: the step's new K and V rows, premasked together once) --")
            _print_table(plain["attention_products"], pre["attention_products"])
            _print_step("attention per step", plain["attention_per_step"],
                        pre["attention_per_step"], entry["attention_ratio_per_step"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--dealers", nargs="+", default=list(DEALERS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--context", type=int, default=1024,
                        help="KV-cache rows for the attention products (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("runs/premask_bytes.json"))
    args = parser.parse_args(argv)
    config = BenchConfig(parties=args.parties, dealers=tuple(args.dealers),
                         repeats=args.repeats, context=args.context)
    result = run(config)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
