"""Measured per-party unit costs of the primitives that the top-k cost model counts.

Fitted by benchmarks/topk_cost.py (CrypTen's comparison, docs/numerics.md) and measured on
11,008 elements (the masked comparison, ``primitives.comparison``), with 2 parties.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitCosts:
    """Measured per-party cost of CrypTen primitives (see benchmarks/topk_cost.py).

    cmp_bytes / cmp_rounds: one batched comparison (bytes per element, rounds per call);
    mul_bytes / mul_rounds: one batched Beaver multiplication;
    lookup_bytes / lookup_word_bytes / lookup_rounds: one dealt one-hot (``primitives.onehot``)
    per element, plus the dealer's bytes per word it deals party 0 (W words, or from W = 32
    the DPF keys' correction words, ``onehot_dealer.party0_words_per_element``).
    """

    cmp_bytes: float
    cmp_rounds: float
    mul_bytes: float
    mul_rounds: float
    lookup_bytes: float = 16.0
    lookup_word_bytes: float = 0.0
    lookup_rounds: float = 1.0



def measured_units() -> dict[tuple[str, str], UnitCosts]:
    """Per-party unit costs with 2 parties, keyed by (dealer, comparison protocol).

    CrypTen's comparison: fitted by benchmarks/topk_cost.py (docs/numerics.md). The masked
    comparison (``crypten_mpcache.secure.primitives.comparison``) and the DCF comparison
    (``primitives.dcf_comparison``: 1 online round, then the keys: 3 dealer rounds with the
    TTP on demand, 1 send with TFP): measured on 11,008 elements, party 0 (which also
    receives the TTP's material), dealing on demand. The masked comparison's figures are
    those of its tree of 4-way merges over 63 bits (5 rounds; 4 within a bound of 2^32 raw
    units), remeasured when it replaced the binary tree (63.5 / 95.3 bytes, 8 / 11
    rounds; ``python benchmarks/comparison_units.py``).
    """
    tfp_mul = {"mul_bytes": 32.0, "mul_rounds": 1.0}
    ttp_mul = {"mul_bytes": 111.6, "mul_rounds": 4.0, "lookup_word_bytes": 8.0,
               "lookup_rounds": 4.0}
    return {
        ("tfp", "crypten"): UnitCosts(cmp_bytes=432.0, cmp_rounds=8.0, **tfp_mul),
        ("ttp", "crypten"): UnitCosts(cmp_bytes=544.1, cmp_rounds=32.0, **ttp_mul),
        ("tfp", "masked"): UnitCosts(cmp_bytes=52.75, cmp_rounds=5.0, **tfp_mul),
        ("ttp", "masked"): UnitCosts(cmp_bytes=125.6, cmp_rounds=8.0, **ttp_mul),
        ("tfp", "dcf"): UnitCosts(cmp_bytes=1567.8, cmp_rounds=2.0, **tfp_mul),
        ("ttp", "dcf"): UnitCosts(cmp_bytes=1559.8, cmp_rounds=4.0, **ttp_mul),
    }

