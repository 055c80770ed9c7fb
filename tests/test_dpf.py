"""The distributed point function against its definition (``secure.primitives.dpf``).

f(x) = beta [x == alpha] on x < 2^n; two keys, each party's full-domain expansion an
additive share mod 2^64 of f at every point. Exhaustive over every alpha at small widths,
across the expansion's element slices, and each key alone independent of alpha.
"""

from __future__ import annotations

import numpy as np
import pytest

from crypten_mpcache.secure.primitives import dpf


def _expected(alpha: np.ndarray, beta: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros((alpha.size, 1 << bits), np.uint64)
    out[np.arange(alpha.size), alpha.astype(np.int64)] = beta
    return out


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 7, 10])
def test_every_alpha_expands_to_its_point(bits: int) -> None:
    alpha = np.repeat(np.arange(1 << bits, dtype=np.uint64), 2)
    beta = np.random.default_rng(bits).integers(0, 2**64, size=alpha.size, dtype=np.uint64,
                                                endpoint=False)
    beta[0] = np.uint64(2**64 - 1)                          # -1: shares wrap the ring
    k0, k1 = dpf.gen(alpha, bits, beta)
    assert np.array_equal(dpf.evaluate_all(k0) + dpf.evaluate_all(k1),
                          _expected(alpha, beta, bits))


def test_unit_vectors_across_expansion_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elements expanded in several slices (a slice of 3 elements here) give the same
    shares as in one: the default beta is 1, the unit vector."""
    monkeypatch.setattr(dpf, "_LEAVES_PER_SLICE", 3 << 6)
    alpha = np.random.default_rng(3).integers(0, 64, size=20).astype(np.uint64)
    k0, k1 = dpf.gen(alpha, 6)
    got = dpf.evaluate_all(k0) + dpf.evaluate_all(k1)
    assert np.array_equal(got, _expected(alpha, np.ones(20, np.uint64), 6))


def test_one_key_does_not_depend_on_alpha() -> None:
    """Party 0's key for alpha = 0 and for alpha = 2^12 - 1 look alike: correction-word
    bits balanced, and its expansion uniform ring elements at alpha as elsewhere."""
    count, bits = 3000, 12
    for alpha_value in (0, (1 << bits) - 1):
        k0, _ = dpf.gen(np.full(count, alpha_value, dtype=np.uint64), bits)
        assert abs(np.unpackbits(k0.s_cw.reshape(-1)).mean() - 0.5) < 0.01
        assert abs(k0.t_cw_left.mean() - 0.5) < 0.05 and abs(k0.t_cw_right.mean() - 0.5) < 0.05
        assert abs((k0.final >> np.uint64(63)).mean() - 0.5) < 0.05
        share = dpf.evaluate_all(k0)[:, alpha_value]
        assert abs((share >> np.uint64(63)).mean() - 0.5) < 0.05


def test_key_size_and_bad_inputs() -> None:
    key = dpf.gen(np.zeros(10, np.uint64), 7)[0]
    # root seed + 7 x seed CW 16 + output CW 8 bytes + 2 control bits a level
    assert key.nbytes() == 10 * (16 + 7 * 16 + 8) + (2 * 7 * 10 + 7) // 8
    with pytest.raises(ValueError, match="2\\^1 to"):
        dpf.gen(np.zeros(1, np.uint64), dpf.MAX_BITS + 1)
    with pytest.raises(ValueError, match="below 2\\^4"):
        dpf.gen(np.array([16], np.uint64), 4)
