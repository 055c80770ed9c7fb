"""The pure parts of the namespace harness: link profiles, delay and rate arithmetic, and
the measured-vs-model comparison (no root, no namespaces: unit-tested in the default suite).

Why a separate module: ``netns_links`` needs root to run, but whether it parses a profile,
sizes a shaper or prices a decode step correctly must be checkable anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crypten_mpcache.runtime.network import PROFILES, NetworkProfile

UNSHAPED = "unshaped"  # the reference run: namespaces and routing, no shaper, no delayer
_RATE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def parse_rate(text: str) -> float:
    """Bits per second of '3gbit', '200mbit', '500kbit' or '1e9' (tc's spelling)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmg]?)(?:bit|bps)?\s*", text.lower())
    if not match:
        raise ValueError(f"expected a rate like 200mbit or 3gbit, got {text!r}")
    value = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if not value > 0:
        raise ValueError(f"a rate must be positive, got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """Seconds of '40ms', '0.8ms', '250us' or '1s'."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(s|ms|us)\s*", text.lower())
    if not match:
        raise ValueError(f"expected a duration like 40ms or 0.8ms, got {text!r}")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_profile(text: str) -> NetworkProfile | None:
    """A README profile by name (LAN, WAN), RATE/RTT ('1gbit/10ms'), or None for unshaped."""
    name = text.strip()
    if name.lower() == UNSHAPED:
        return None
    if name.upper() in PROFILES:
        return PROFILES[name.upper()]
    if "/" in name:
        rate, rtt = name.split("/", 1)
        return NetworkProfile(name, bandwidth_bps=parse_rate(rate), rtt_s=parse_duration(rtt))
    raise ValueError(f"unknown profile {text!r}: give {', '.join(PROFILES)}, {UNSHAPED}, "
                     "or RATE/RTT such as 1gbit/10ms")


def one_way_hold_s(rtt_s: float, base_rtt_s: float = 0.0) -> float:
    """How long the delayer holds each packet: every packet crosses it once per direction,
    so a request and its answer are held twice; the path's own round trip (kernel and
    delayer's wake-ups, measured) is taken off so that the total lands on ``rtt_s``."""
    if rtt_s < 0 or base_rtt_s < 0:
        raise ValueError(f"round trips must be >= 0, got {rtt_s} and {base_rtt_s}")
    return max(0.0, rtt_s - base_rtt_s) / 2.0


def shaper_burst_bytes(rate_bps: float, mtu: int) -> int:
    """htb's burst: what the rate carries in 1 ms (the shaper's timer resolution order), at
    least two packets, so that a fast link is not throttled by its own bucket size."""
    return max(2 * mtu, int(rate_bps / 8 * 1e-3))


def tc_rate(rate_bps: float) -> str:
    """tc's spelling of a rate in whole kbit (tc rounds the same way)."""
    return f"{max(1, round(rate_bps / 1e3))}kbit"


@dataclass(frozen=True)
class LinkMeasure:
    """What one shaped link actually gave: ping and TCP round trips, TCP bulk rate."""

    icmp_rtt_s: float
    tcp_rtt_s: float
    bulk_bps: float

    def as_profile(self, name: str) -> NetworkProfile:
        """The model's link with the measured figures (a TCP round trip: what a round of
        gloo messages waits on)."""
        return NetworkProfile(name + " measured", bandwidth_bps=self.bulk_bps,
                              rtt_s=self.tcp_rtt_s)


def step_inputs(cost_step: dict[str, Any], parties: int) -> tuple[float, float]:
    """(rounds, per-party bytes) of one decode step from the client's ``--json`` cost.
    The client's bytes are summed over the parties; the model wants one party's."""
    return float(cost_step["rounds"]), float(cost_step["bytes"]) / parties


def predict_step(profile: NetworkProfile, compute_s: float, cost_step: dict[str, Any],
                 parties: int) -> float:
    """The cost model's seconds for one decode step (``NetworkProfile.latency``)."""
    rounds, party_bytes = step_inputs(cost_step, parties)
    return profile.latency(compute_s, rounds, party_bytes)


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured: negative when the model is optimistic."""
    if not measured > 0:
        raise ValueError(f"measured seconds must be positive, got {measured}")
    return (predicted - measured) / measured


def compare_steps(measured_steps: list[dict[str, Any]], reference_steps: list[dict[str, Any]],
                  target: NetworkProfile, link: LinkMeasure, parties: int
                  ) -> list[dict[str, Any]]:
    """One row per decode step: measured wall seconds beside the model's prediction at the
    target profile and at the measured link, compute taken from the unshaped reference;
    and what a counted round really cost, in measured round trips (the model says 1)."""
    if len(measured_steps) != len(reference_steps):
        raise ValueError(f"{len(measured_steps)} measured decode steps but "
                         f"{len(reference_steps)} in the unshaped reference")
    rows = []
    for step, reference in zip(measured_steps, reference_steps, strict=True):
        if (step["rounds"], step["bytes"]) != (reference["rounds"], reference["bytes"]):
            raise ValueError(f"decode step {step['step']}: the shaped run exchanged "
                             f"{step['rounds']} rounds / {step['bytes']} bytes, the reference "
                             f"{reference['rounds']} / {reference['bytes']}: not the same run")
        compute = float(reference["seconds"])
        rounds, party_bytes = step_inputs(step, parties)
        at_target = predict_step(target, compute, step, parties)
        at_link = predict_step(link.as_profile(target.name), compute, step, parties)
        measured = float(step["seconds"])
        link_rtt = link.as_profile(target.name)
        network_s = measured - compute - party_bytes * 8.0 / link_rtt.bandwidth_bps
        rows.append({"step": int(step["step"]), "rounds": rounds,
                     "rtts_per_round": network_s / (rounds * link_rtt.rtt_s),
                     "bytes_per_party": party_bytes, "compute_s": compute, "measured_s": measured,
                     "model_target_s": at_target,
                     "error_target": relative_error(at_target, measured),
                     "model_link_s": at_link, "error_link": relative_error(at_link, measured)})
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:+.0f}%"


def link_table(links: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: the delay and rate each profile asked for beside what was measured."""
    lines = ["| profile | target RTT | ping RTT | TCP RTT | target rate | TCP bulk |",
             "|---|---|---|---|---|---|"]
    for name, link in links.items():
        target = link.get("target")
        lines.append(
            f"| {name} | {_ms(target['rtt_s']) if target else '-'} | "
            f"{_ms(link['icmp_rtt_s'])} | {_ms(link['tcp_rtt_s'])} | "
            f"{_rate(target['bandwidth_bps']) if target else '-'} | {_rate(link['bulk_bps'])} |")
    return lines


def model_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: per (profile, cache) the mean decode step, measured vs model, and errors."""
    lines = ["| profile | cache | steps | rounds | MiB/party | compute s | measured s | "
             "model (target link) s | error | model (measured link) s | error | "
             "RTTs per round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['profile']} | {r['cache']} | {r['steps']} | {r['rounds']:.0f} | "
            f"{r['bytes_per_party'] / 2**20:.1f} | {r['compute_s']:.2f} | {r['measured_s']:.2f} | "
            f"{r['model_target_s']:.2f} | {_pct(r['error_target'])} | {r['model_link_s']:.2f} | "
            f"{_pct(r['error_link'])} | {r['rtts_per_round']:.2f} |")
    return lines


def mean_row(profile: str, cache: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over decode steps of ``compare_steps``'s rows (errors of the means)."""
    if not steps:
        raise ValueError(f"{profile} {cache}: no decode step to compare")
    keys = ("rounds", "bytes_per_party", "compute_s", "measured_s", "model_target_s",
            "model_link_s", "rtts_per_round")
    mean = {k: sum(s[k] for s in steps) / len(steps) for k in keys}
    return {"profile": profile, "cache": cache, "steps": len(steps), **mean,
            "error_target": relative_error(mean["model_target_s"], mean["measured_s"]),
            "error_link": relative_error(mean["model_link_s"], mean["measured_s"])}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _rate(bps: float) -> str:
    return f"{bps / 1e9:.2f} Gbps" if bps >= 1e9 else f"{bps / 1e6:.0f} Mbps"
