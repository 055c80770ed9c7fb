"""The distributed comparison function against its definition (``secure.primitives.dcf``).

f(x) = beta if x < alpha else 0 (unsigned, n bits); two keys, each party's evaluation an
additive share mod 2^64. Exhaustive over every (alpha, x) at small widths; edge values at
full width; each key alone carries no information about alpha (its correction words are
the same in both keys; the root seeds are fresh randomness).
"""

from __future__ import annotations

import numpy as np
import pytest

from crypten_mpcache.secure.primitives import dcf

EDGES = np.array([0, 1, 2, 2**40 - 1, 2**40, 2**40 + 1, 2**63 - 1, 2**63, 2**63 + 1,
                  2**64 - 2, 2**64 - 1], dtype=np.uint64)


def _reconstruct(alpha: np.ndarray, beta: np.ndarray, x: np.ndarray, bits: int) -> np.ndarray:
    k0, k1 = dcf.gen(alpha, beta, bits)
    return dcf.evaluate(k0, x) + dcf.evaluate(k1, x)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6])
def test_exhaustive_small_widths(bits: int) -> None:
    n = 2**bits
    alpha = np.repeat(np.arange(n, dtype=np.uint64), n)
    x = np.tile(np.arange(n, dtype=np.uint64), n)
    beta = np.random.default_rng(bits).integers(0, 2**64, size=n * n, dtype=np.uint64,
                                                endpoint=False)
    got = _reconstruct(alpha, beta, x, bits)
    assert np.array_equal(got, np.where(x < alpha, beta, np.uint64(0)))


@pytest.mark.parametrize("bits", [63, 64])
def test_edge_values_at_full_width(bits: int) -> None:
    """0, +-1 ulp, +-2^40, the ring's extremes, against each other (both orders)."""
    edges = EDGES[EDGES < np.uint64(2**bits - 1)] if bits < 64 else EDGES
    if bits < 64:
        edges = np.append(edges, np.uint64(2**bits - 1))
    alpha, x = np.repeat(edges, len(edges)), np.tile(edges, len(edges))
    beta = np.full(alpha.shape, 2**64 - 1, dtype=np.uint64)  # -1: shares wrap the ring
    got = _reconstruct(alpha, beta, x, bits)
    assert np.array_equal(got, np.where(x < alpha, beta, np.uint64(0)))


def test_random_full_width_and_key_size() -> None:
    rng = np.random.default_rng(7)
    alpha = rng.integers(0, 2**63, size=4096, dtype=np.uint64)
    x = np.where(rng.random(4096) < 0.5, alpha + np.uint64(1), alpha - np.uint64(1))
    got = _reconstruct(alpha, np.ones(4096, np.uint64), x, 63)
    assert np.array_equal(got, (x < alpha).astype(np.uint64))
    key = dcf.gen(alpha[:10], np.ones(10, np.uint64), 63)[0]
    # root seed + 63 x (seed CW 16 + value CW 8) + final 8 bytes + 2 control bits a level
    assert key.nbytes() == 10 * (16 + 63 * 24 + 8) + (2 * 63 * 10 + 7) // 8


def test_one_key_does_not_depend_on_alpha() -> None:
    """Party 0's key for alpha = 0 and for alpha = 2^62 + 5 look alike: every correction
    word byte is uniform (a chi-square-free check: means and bit balance), and its
    evaluations at the same x are uniform ring elements, not the bit."""
    count = 4000
    for alpha_value in (0, 2**62 + 5):
        alpha = np.full(count, alpha_value, dtype=np.uint64)
        k0, _ = dcf.gen(alpha, np.ones(count, np.uint64), 63)
        bits = np.unpackbits(k0.s_cw.reshape(-1))
        assert abs(bits.mean() - 0.5) < 0.01
        assert abs(k0.t_cw_left.mean() - 0.5) < 0.05 and abs(k0.t_cw_right.mean() - 0.5) < 0.05
        share = dcf.evaluate(k0, np.full(count, 2**61, dtype=np.uint64))
        assert abs((share >> np.uint64(63)).mean() - 0.5) < 0.05  # top bit of a share


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="bits"):
        dcf.gen(np.zeros(1, np.uint64), np.ones(1, np.uint64), 65)
    k0, _ = dcf.gen(np.zeros(2, np.uint64), np.ones(2, np.uint64), 8)
    with pytest.raises(ValueError, match="shape"):
        dcf.evaluate(k0, np.zeros(3, np.uint64))
