"""Network profiles: turn measured (rounds, bytes) into latency.

latency = compute_s + rounds * rtt_s + bytes * 8 / bandwidth_bps, where ``bytes`` is the
traffic ONE party sends (CrypTen's per-party ``comm_bytes``; in a 2-party protocol both
parties send about the same amount at the same time over a full-duplex link, so the
per-party figure is what the link must carry in each direction). Pass per-party bytes,
not the sum over parties that ``runtime.cost.combine`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkProfile:
    """A link between the parties: bandwidth in bits per second, round-trip time in seconds."""

    name: str
    bandwidth_bps: float
    rtt_s: float

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise ValueError(f"bandwidth_bps must be positive, got {self.bandwidth_bps}")
        if self.rtt_s < 0:
            raise ValueError(f"rtt_s must be >= 0, got {self.rtt_s}")

    def latency(self, compute_s: float, rounds: float, bytes_per_party: float) -> float:
        """Seconds: compute + rounds * RTT + per-party bytes * 8 / bandwidth."""
        return compute_s + rounds * self.rtt_s + bytes_per_party * 8.0 / self.bandwidth_bps


LAN = NetworkProfile("LAN", bandwidth_bps=3e9, rtt_s=0.8e-3)
WAN = NetworkProfile("WAN", bandwidth_bps=200e6, rtt_s=40e-3)
PROFILES = {"LAN": LAN, "WAN": WAN}
