"""The top-k cost model: element and round counts per protocol, and the protocol of least latency.

Counts (``protocol_counts``) are what a protocol of ``functions.topk`` does, independent of
the dealer; ``TopKConfig`` prices them with measured unit costs
(``functions.unit_costs``) and a network profile (``runtime.network``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from crypten_mpcache.runtime.network import LAN, NetworkProfile
from crypten_mpcache.secure.functions.topk import PROTOCOLS
from crypten_mpcache.secure.functions.unit_costs import UnitCosts, measured_units
from crypten_mpcache.secure.primitives.onehot import width_for
from crypten_mpcache.secure.primitives.onehot_dealer import party0_words_per_element


@dataclass(frozen=True)
class Counts:
    """What a protocol does, independent of the dealer: element and round counts."""

    comparisons: int
    comparison_rounds: int
    multiplications: int
    multiplication_rounds: int
    lookups: int = 0
    lookup_width: int = 0
    lookup_rounds: int = 0

    def bytes(self, unit: UnitCosts) -> float:
        return (self.comparisons * unit.cmp_bytes + self.multiplications * unit.mul_bytes
                + self.lookups * (unit.lookup_bytes + unit.lookup_word_bytes
                                  * party0_words_per_element(max(1, self.lookup_width))))

    def rounds(self, unit: UnitCosts) -> float:
        return (self.comparison_rounds * unit.cmp_rounds
                + self.multiplication_rounds * unit.mul_rounds
                + self.lookup_rounds * unit.lookup_rounds)


def _log2(n: int) -> int:
    return max(0, math.ceil(math.log2(n))) if n > 1 else 0


def protocol_counts(protocol: str, g: int, k: int, ordered: bool = True) -> Counts:
    """Counts per score vector (multiply bytes by the batch of vectors; rounds do not grow)."""
    if protocol == "iterative":
        levels = _log2(g)
        counts = Counts(k * (g - 1), k * levels, k * (g - 1) + k * (g - 2), 2 * k * levels - k)
        if not ordered:  # the winners are the rows: no ordering step
            return counts
    elif protocol == "rank":
        if not ordered:  # one dealt one-hot per item replaces the mask's comparisons
            return Counts(g * (g - 1) // 2, 1, 0, 0, lookups=g, lookup_width=width_for(g),
                          lookup_rounds=1)
        counts = Counts(g * (g - 1) // 2 + g, 2, 0, 0)
    elif protocol == "network":
        width = 1 << _log2(k)
        blocks = 1 << _log2(math.ceil(g / width))
        n = width * blocks
        sort_layers = _log2(width) * (_log2(width) + 1) // 2
        merges = _log2(blocks)
        merge_layers = merges * (1 + _log2(width))
        cmp = n // 2 * sort_layers + sum(
            (blocks >> (m + 1)) * width * (1 + _log2(width) / 2) for m in range(merges))
        counts = Counts(int(cmp) + g, sort_layers + merge_layers + 1, int(cmp),
                        sort_layers + merge_layers)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    if ordered:
        counts = Counts(counts.comparisons + k * g, counts.comparison_rounds + 1,
                        counts.multiplications, counts.multiplication_rounds)
    return counts


@dataclass(frozen=True)
class TopKConfig:
    """The cost model: measured unit costs per (dealer, comparison) and the candidate
    protocols."""

    protocols: tuple[str, ...] = PROTOCOLS
    dealer: str = "ttp"
    comparison: str = "masked"
    units: dict[tuple[str, str], UnitCosts] = field(default_factory=measured_units)

    def __post_init__(self) -> None:
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}")
        if (self.dealer, self.comparison) not in self.units:
            raise ValueError(f"no unit costs for dealer {self.dealer!r} with comparison "
                             f"{self.comparison!r}")

    def estimate(self, protocol: str, g: int, k: int, batch: int = 1,
                 ordered: bool = True) -> tuple[float, float]:
        """(per-party bytes, rounds) predicted for ``batch`` score vectors of length g."""
        counts = protocol_counts(protocol, g, k, ordered)
        unit = self.units[(self.dealer, self.comparison)]
        return counts.bytes(unit) * batch, counts.rounds(unit)

    def latency(self, protocol: str, g: int, k: int, network: NetworkProfile = LAN,
                batch: int = 1, ordered: bool = True) -> float:
        bytes_, rounds = self.estimate(protocol, g, k, batch, ordered)
        return network.latency(0.0, rounds, bytes_)


def choose_protocol(g: int, k: int, network: NetworkProfile = LAN,
                    config: TopKConfig = TopKConfig(), batch: int = 1,
                    ordered: bool = True) -> str:
    """The protocol of least predicted latency (rounds * RTT + bytes / bandwidth)."""
    return min(config.protocols,
               key=lambda p: config.latency(p, g, k, network, batch, ordered))
