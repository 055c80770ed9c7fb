"""Distributed comparison functions (DCF): a dealer's keys for [x < alpha], one per element.

Why: a comparison whose online part is ONE opening. The dealer (who knows a random mask r)
gives each party a key for f(x) = beta if x < alpha else 0 over n-bit unsigned inputs;
each party evaluates its key on the opened public value locally and gets an additive
share (mod 2^64) of f(x). The construction is the DCF of Boyle, Chandran, Gilboa, Gupta,
Ishai, Kumar and Rathee, "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
Computation" (EUROCRYPT 2021), itself after Boyle, Gilboa and Ishai's tree-based FSS
(CCS 2016): a GGM-style tree of depth n whose two keys share every seed off the path of
alpha and differ on it; per level a correction word fixes the seeds where the evaluation
leaves alpha's path and adds beta on the branches below alpha. docs/fss.md has the
algorithm, the key sizes and the security argument.

PRG: ``secure.primitives.prg`` (fixed-key AES-128, one call per tree level for all
elements). Every key of a batch of E elements is a set of arrays with E in the last axis,
so ``gen`` and ``evaluate`` are vectorized over elements (a Python loop runs only over
the n tree levels).

``secure.primitives.dcf_comparison`` builds the one-round comparison [x < 0] on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crypten_mpcache.secure.primitives.prg import (
    SEED_BYTES,
    TreeKey,
    branch,
    random_seeds,
    to_ring,
    xor_where,
)
from crypten_mpcache.secure.primitives.prg import expand as prg

WIDTHS = (1, 2)          # payload words per element: the final seed converts to at most 2


@dataclass(frozen=True)
class DCFKey(TreeKey):
    """One party's keys for E elements of ``bits``-bit inputs and a payload of ``width``
    ring words (``TreeKey``; v_cw (n, E, width) the per-level value correction words,
    final (E, width) the last ones)."""

    v_cw: np.ndarray

    def value_words(self) -> tuple[np.ndarray, ...]:
        return (self.v_cw,)

    @property
    def width(self) -> int:
        return int(self.final.shape[1])

    def nbytes(self) -> int:
        """Bytes to send this key: seed, n x (seed CW + value CWs + 2 control bits), final
        values (the control bits packed 8 to a byte)."""
        per_level = SEED_BYTES + 8 * self.width
        bits = 2 * self.bits * self.elements
        return self.elements * (SEED_BYTES + self.bits * per_level + 8 * self.width) \
            + (bits + 7) // 8


def _signed(value: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """value (E, width), or -value mod 2^64 in the rows where ``negative`` (E,) is 1."""
    return np.where(negative.astype(bool)[:, None], np.uint64(0) - value, value)


def _bit(x: np.ndarray, level: int, bits: int) -> np.ndarray:
    """Bit ``level`` of x counted from the most significant of ``bits`` (0/1 uint8)."""
    return ((x >> np.uint64(bits - 1 - level)) & np.uint64(1)).astype(np.uint8)


def _payload(beta: np.ndarray, count: int) -> np.ndarray:
    """beta as (E, width) uint64, refusing other widths."""
    beta = np.asarray(beta, dtype=np.uint64)
    beta = beta[:, None] if beta.ndim == 1 else beta
    if beta.ndim != 2 or beta.shape[0] != count or beta.shape[1] not in WIDTHS:
        raise ValueError(f"beta must have shape ({count},) or ({count}, w), w in {WIDTHS}; "
                         f"got {tuple(beta.shape)}")
    return beta


def gen(alpha: np.ndarray, beta: np.ndarray, bits: int,
        roots: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[DCFKey, DCFKey]:
    """Keys of f(x) = beta if x < alpha (unsigned ``bits``-bit) else 0, per element.

    alpha: (E,) uint64 (alpha < 2^bits); beta: (E,) or (E, w) uint64, w words of payload
    selected together by one comparison (w = 2 lets ``dcf_comparison`` output a bit and
    the bit times a ring element from one key). ``roots``: the two parties' (E, 16) root
    seeds (default: fresh from the OS; a TTP passes the seeds each party draws from the
    generator it shares with it). The dealer runs this; each key alone is pseudorandom
    (it reveals neither alpha nor beta)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    alpha = np.asarray(alpha, dtype=np.uint64)
    count = alpha.shape[0]
    beta = _payload(beta, count)
    width = beta.shape[1]
    roots = [random_seeds(count), random_seeds(count)] if roots is None else \
        [np.ascontiguousarray(r, dtype=np.uint8).reshape(count, SEED_BYTES) for r in roots]
    s = [roots[0].copy(), roots[1].copy()]
    t = [np.zeros(count, np.uint8), np.ones(count, np.uint8)]
    v_alpha = np.zeros((count, width), np.uint64)
    s_cw = np.empty((bits, count, SEED_BYTES), np.uint8)
    v_cw = np.empty((bits, count, width), np.uint64)
    t_cw = np.empty((2, bits, count), np.uint8)
    for level in range(bits):
        expanded = [prg(s[0], width), prg(s[1], width)]       # per party: sL vL tL sR vR tR
        a = _bit(alpha, level, bits)                          # alpha_i: 1 -> keep right
        keep_right = a.astype(bool)
        s_lose = [branch(keep_right, e[3], e[0]) for e in expanded]
        v_lose = [branch(keep_right, e[4], e[1]) for e in expanded]
        s_keep = [branch(keep_right, e[0], e[3]) for e in expanded]
        v_keep = [branch(keep_right, e[1], e[4]) for e in expanded]
        s_cw[level] = s_lose[0] ^ s_lose[1]
        correction = v_lose[1] - v_lose[0] - v_alpha
        correction = correction + np.where(keep_right[:, None], beta, np.uint64(0))
        v_cw[level] = _signed(correction, t[1])
        v_alpha = v_alpha - v_keep[1] + v_keep[0] + _signed(v_cw[level], t[1])
        t_cw[0, level] = expanded[0][2] ^ expanded[1][2] ^ a ^ 1
        t_cw[1, level] = expanded[0][5] ^ expanded[1][5] ^ a
        t_keep_cw = np.where(keep_right, t_cw[1, level], t_cw[0, level])
        for b in (0, 1):
            t_keep = np.where(keep_right, expanded[b][5], expanded[b][2])
            s[b] = xor_where(s_keep[b], t[b], s_cw[level])
            t[b] = t_keep ^ (t[b] & t_keep_cw)
    final = _signed(to_ring(s[1], width) - to_ring(s[0], width) - v_alpha, t[1])
    return tuple(DCFKey(party=b, bits=bits, seed=roots[b], s_cw=s_cw, t_cw_left=t_cw[0],
                        t_cw_right=t_cw[1], final=final, v_cw=v_cw)
                 for b in (0, 1))


def evaluate(key: DCFKey, x: np.ndarray) -> np.ndarray:
    """This party's additive share (mod 2^64) of f(x), per element: x (E,) uint64; the
    result (E,) for a payload of one word, else (E, width)."""
    x = np.asarray(x, dtype=np.uint64)
    if x.shape != (key.elements,):
        raise ValueError(f"x must have shape ({key.elements},), got {tuple(x.shape)}")
    width, negative = key.width, np.full(key.elements, key.party, np.uint8)
    s, t = key.seed.copy(), np.full(key.elements, key.party, np.uint8)
    total = np.zeros((key.elements, width), np.uint64)
    for level in range(key.bits):
        s_left, v_left, t_left, s_right, v_right, t_right = prg(s, width)
        s_left = xor_where(s_left, t, key.s_cw[level])
        s_right = xor_where(s_right, t, key.s_cw[level])
        t_left = t_left ^ (t & key.t_cw_left[level])
        t_right = t_right ^ (t & key.t_cw_right[level])
        right = _bit(x, level, key.bits).astype(bool)
        value = np.where(right[:, None], v_right, v_left) \
            + np.where(t.astype(bool)[:, None], key.v_cw[level], np.uint64(0))
        total = total + _signed(value, negative)
        s = np.where(right[:, None], s_right, s_left)
        t = np.where(right, t_right, t_left)
    last = to_ring(s, width) + np.where(t.astype(bool)[:, None], key.final, np.uint64(0))
    total = total + _signed(last, negative)
    return total[:, 0] if width == 1 else total


__all__ = ["DCFKey", "evaluate", "gen", "prg", "random_seeds"]
