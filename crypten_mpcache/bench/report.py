"""The side-by-side table: per-step costs per (context, cache), and full/cache ratios.

Why ratios against ``full`` at the same context, shape, layers and dealer: every
optimization that does not depend on eviction (premasking, activations, softmax and
comparison protocols) runs in both, so the ratio measures eviction and nothing else.
Latency: measured compute + rounds x RTT + per-party bytes / bandwidth
(``runtime.network``: LAN 3 Gbps / 0.8 ms RTT, WAN 200 Mbps / 40 ms RTT).
With the TTP dealer, the "online" table leaves out the dealer's traffic: its material
depends only on public shapes, and by default each phase's is dealt ahead of the phase
(``runtime.offline``); the "offline" columns are that dealing (with ``--dealing
on-demand``: the on-demand fetches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crypten_mpcache.bench import bounds
from crypten_mpcache.runtime.network import LAN, WAN
from crypten_mpcache.runtime.report import MIB

BASELINE = "full"
KINDS = ("similarity", "topk", "gather", "pick", "softmax", "attention_scores", "attention_values",
         "linear", "norm", "activation", "premask", "dealer", "other")


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def cost_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per row: per decode step of the benchmarked layers, and one-time static."""
    header = ["context", "cache", "attended", "MiB/step", "rounds", "compute s", "LAN s",
              "WAN s", "MiB/layer", "static MiB", "static rounds"]
    body = [[str(r["context"]), r["cache"], str(r["attended_max"]),
             _fmt(r["bytes"] / MIB), str(int(r["rounds"])), _fmt(r["seconds"]),
             _fmt(r["lan_seconds"]), _fmt(r["wan_seconds"]),
             _fmt(r["per_layer"]["bytes"] / MIB), _fmt(r["static_bytes"] / MIB),
             str(int(r["static_rounds"]))] for r in rows]
    return _table(header, body)


def has_dealer_traffic(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("dealer_bytes", 0) or r.get("dealer_rounds", 0) for r in rows)


def online_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per decode step without the dealer's traffic, and the dealer's part apart."""
    header = ["context", "cache", "online MiB/step", "online rounds", "online LAN s",
              "online WAN s", "offline MiB/step", "offline rounds", "offline s"]
    body = [[str(r["context"]), r["cache"], _fmt(r["online_bytes"] / MIB),
             _fmt(r["online_rounds"], 1), _fmt(r["online_lan_seconds"]),
             _fmt(r["online_wan_seconds"]), _fmt(r["dealer_bytes"] / MIB),
             _fmt(r["dealer_rounds"], 1), _fmt(r.get("dealer_seconds", float("nan")))]
            for r in rows]
    return _table(header, body)


def online_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """full/cache of the online costs (same pairing as ``ratios``)."""
    return _ratios(rows, {"bytes": "online_bytes", "rounds": "online_rounds",
                          "compute": "online_seconds", "lan": "online_lan_seconds",
                          "wan": "online_wan_seconds"})


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """full/cache for every non-full row that has a full row at the same context."""
    return _ratios(rows, {"bytes": "bytes", "rounds": "rounds", "compute": "seconds",
                          "lan": "lan_seconds", "wan": "wan_seconds"})


def _ratios(rows: list[dict[str, Any]], keys: dict[str, str]) -> list[dict[str, Any]]:
    """full/cache for every non-full row that has a full row at the same context."""
    full = {r["context"]: r for r in rows if r["cache"] == BASELINE}
    out = []
    for r in rows:
        base = full.get(r["context"])
        if base is None or r["cache"] == BASELINE:
            continue
        out.append({"context": r["context"], "cache": r["cache"],
                    **{name: base[key] / r[key] for name, key in keys.items()}})
    return out


def ratio_table(rows: list[dict[str, Any]],
                which: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = ratios
                ) -> list[str]:
    header = ["context", "full / cache", "bytes", "rounds", "compute", "LAN latency",
              "WAN latency"]
    body = [[str(q["context"]), q["cache"], _fmt(q["bytes"]) + "x", _fmt(q["rounds"]) + "x",
             _fmt(q["compute"]) + "x", _fmt(q["lan"]) + "x", _fmt(q["wan"]) + "x"]
            for q in which(rows)]
    return _table(header, body)


def operator_table(rows: list[dict[str, Any]]) -> list[str]:
    """MiB / rounds per decode step for each operator kind."""
    present = [k for k in KINDS if any(k in r["operators"] for r in rows)]
    present += sorted({k for r in rows for k in r["operators"]} - set(present))
    header = ["context", "cache"] + present
    body = []
    for r in rows:
        cells = []
        for kind in present:
            op = r["operators"].get(kind)
            cells.append("-" if op is None else
                         f"{op['bytes'] / MIB:.2f} / {int(round(op['rounds']))}")
        body.append([str(r["context"]), r["cache"]] + cells)
    return _table(header, body)


def selection_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per selecting row: its selection's online MiB (similarity, top-k, gather, pick)
    and share of the step, and what each top-k of the last step ran (G -> k protocol)."""
    header = ["context", "cache", "selection MiB", "of which pick", "share of step",
              "top-k calls (last step)"]
    body = []
    for r in rows:
        if not r.get("topk_last_step"):
            continue
        ops = r["operators"]
        selection = sum(bounds.online(ops[k], "bytes") for k in bounds.SELECTION if k in ops)
        pick = bounds.online(ops["pick"], "bytes") if "pick" in ops else 0.0
        body.append([str(r["context"]), r["cache"], _fmt(selection / MIB), _fmt(pick / MIB),
                     f"{100 * selection / max(1, r['online_bytes']):.0f}%",
                     "; ".join(r["topk_last_step"])])
    return _table(header, body) if body else []


def format_report(result: dict[str, Any]) -> str:
    """The whole markdown report of a ``BenchResult.as_dict()``."""
    config, rows = result["config"], result["rows"]
    lines = [
        f"shape {config['shape']}, {config['layers']} layer(s), budget {config['budget']}, "
        f"dealer {config['dealer']} (dealing {config.get('dealing', 'on-demand')}), "
        f"comparison {config.get('comparison', 'crypten')}, "
        f"SiLU {config.get('activation', 'exp_poly')}, "
        f"{config['parties']} parties, {config['steps']} decode "
        f"step(s) per row; bytes summed over parties, per decode step of the "
        f"{config['layers']} benchmarked layer(s)",
        f"latency = compute + rounds x RTT + per-party bytes / bandwidth; "
        f"{LAN.name} {LAN.bandwidth_bps / 1e9:g} Gbps / {LAN.rtt_s * 1e3:g} ms RTT, "
        f"{WAN.name} {WAN.bandwidth_bps / 1e6:g} Mbps / {WAN.rtt_s * 1e3:g} ms RTT",
        "", "Per decode step:", ""]
    lines += cost_table(rows)
    if ratios(rows):
        lines += ["", "Ratios full / cache (same context, same run):", ""]
        lines += ratio_table(rows)
    if has_dealer_traffic(rows) and all("online_bytes" in r for r in rows):
        lines += ["", "Online, and the dealer's traffic apart (offline):", ""]
        lines += online_table(rows)
        if ratios(rows):
            lines += ["", "Online ratios full / cache:", ""]
            lines += ratio_table(rows, online_ratios)
    lines += ["", "Per-operator MiB / rounds per decode step:", ""]
    lines += operator_table(rows)
    selection = selection_table(rows)
    if selection:
        lines += ["", "The selection per decode step (online):", ""] + selection
    if bounds.pairs(rows):
        lines += ["", "What eviction alone can reach (online; ceilings if MPCache's selection "
                  "cost only its pick, if it were free, and if its attention were free too; "
                  "docs/eviction_bounds.md):", ""]
        lines += bounds.table(rows)
    return "\n".join(lines)
