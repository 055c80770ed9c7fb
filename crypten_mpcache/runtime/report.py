"""Human-readable cost tables from a combined cost report (see ``runtime.cost``)."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


def _row(name: str, cost: dict[str, float]) -> str:
    return (f"{name:<22} {cost['bytes'] / MIB:>12.3f} {int(cost['rounds']):>8d} "
            f"{cost['seconds']:>9.2f}")


def _header(title: str) -> list[str]:
    return [f"{title:<22} {'MiB (sum)':>12} {'rounds':>8} {'seconds':>9}",
            "-" * 54]


def _split(cost: dict[str, float]) -> list[str]:
    """The offline (dealer) and online rows of a phase that has dealer traffic."""
    if not (cost.get("dealer_bytes") or cost.get("dealer_rounds")):
        return []
    dealer = {k: cost.get("dealer_" + k, 0) for k in ("bytes", "rounds", "seconds")}
    return [_row("  offline (dealer)", dealer),
            _row("  online", {k: cost[k] - dealer[k] for k in dealer})]


def format_cost(cost: dict[str, Any], *, max_steps: int = 8) -> str:
    """Prefill, decode steps (the first ``max_steps`` and a mean), and operators.

    ``cost`` holds an optional ``setup`` (encrypting and premasking the weights, once),
    ``prefill`` {bytes, rounds, seconds}, ``decode`` [{step, ...}] and
    ``operators`` {kind: {...}}. Bytes are summed over parties, rounds and seconds are the
    max over parties.
    """
    lines = _header("phase")
    if cost.get("setup"):
        lines.append(_row("setup (one-time)", cost["setup"]))
    lines.append(_row("prefill", cost["prefill"]))
    lines.extend(_split(cost["prefill"]))
    steps = cost.get("decode", [])
    for step in steps[:max_steps]:
        lines.append(_row(f"decode step {step['step']}", step))
    if len(steps) > max_steps:
        lines.append(f"... {len(steps) - max_steps} more decode steps")
    if steps:
        keys = [k for k in steps[0] if k != "step"]
        mean = {k: sum(s.get(k, 0) for s in steps) / len(steps) for k in keys}
        lines.append(_row("decode (mean/step)", mean))
        lines.extend(_split(mean))
    lines.append("")
    lines.extend(_header("operator (all phases)"))
    operators = cost.get("operators", {})
    for kind, op in sorted(operators.items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(_row(kind, op))
    return "\n".join(lines)
