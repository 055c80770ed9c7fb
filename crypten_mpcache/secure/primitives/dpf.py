"""Distributed point functions (DPF): a dealer's keys for the unit vector e_alpha, per element.

Why: a dealt one-hot (``secure.primitives.onehot``) of width W = 2^n needs the parties to
hold additive shares of e_alpha for a random alpha the dealer knows. Dealt as words, party
0 receives W ring words per element (1 KiB at W = 128, 64 KiB at W = 8,192). Dealt as DPF
keys it receives n x (16 bytes + 2 control bits) + 8 bytes, and each party expands its key
over the whole domain locally: shares of f(x) = beta [x == alpha] for every x < W.

The construction is Boyle, Gilboa and Ishai's tree DPF ("Function Secret Sharing:
Improvements and Extensions", CCS 2016): a GGM-style tree of depth n whose two keys share
every seed off alpha's path (so the leaves there cancel) and differ on it, with one seed
correction word and two control-bit corrections per level and one output correction word
at the leaf. The PRG is ``secure.primitives.prg`` (fixed-key AES, no value words). Each
key alone is pseudorandom: it reveals neither alpha nor beta (docs/fss.md).

Vectorized over elements and over the domain: level l of the full-domain expansion is one
AES call for the E x 2^l nodes (elements taken in slices that bound the memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crypten_mpcache.secure.primitives.prg import (
    SEED_BYTES,
    TreeKey,
    branch,
    expand,
    random_seeds,
    to_ring,
)

MAX_BITS = 20                   # domains of up to 2^20 points (one-hot widths)
_LEAVES_PER_SLICE = 1 << 18     # nodes expanded per AES call in ``evaluate_all`` (~16 MiB)


@dataclass(frozen=True)
class DPFKey(TreeKey):
    """One party's keys for E elements over a domain of 2^``bits`` points (``TreeKey``;
    final (E,): the output correction word)."""

    def nbytes(self) -> int:
        """Bytes to send this key: root seed, n x (seed CW + 2 control bits), output CW."""
        control = 2 * self.bits * self.elements
        return self.elements * (SEED_BYTES + self.bits * SEED_BYTES + 8) + (control + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"a DPF domain has 2^1 to 2^{MAX_BITS} points, got 2^{bits}")


def gen(alpha: np.ndarray, bits: int, beta: np.ndarray | None = None,
        roots: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[DPFKey, DPFKey]:
    """Keys of f(x) = beta [x == alpha] on x < 2^``bits``, per element.

    alpha: (E,) uint64 (< 2^bits); beta: (E,) uint64 (default 1: the unit vector).
    ``roots``: the two parties' (E, 16) root seeds (default: fresh from the OS; a TTP
    passes the seeds each party draws from the generator it shares with it)."""
    _check_bits(bits)
    alpha = np.asarray(alpha, dtype=np.uint64)
    count = alpha.shape[0]
    if np.any(alpha >> np.uint64(bits)):
        raise ValueError(f"alpha must be below 2^{bits}")
    beta = np.ones(count, np.uint64) if beta is None else np.asarray(beta, dtype=np.uint64)
    roots = [random_seeds(count), random_seeds(count)] if roots is None else \
        [np.ascontiguousarray(r, dtype=np.uint8).reshape(count, SEED_BYTES) for r in roots]
    s = [roots[0].copy(), roots[1].copy()]
    t = [np.zeros(count, np.uint8), np.ones(count, np.uint8)]
    s_cw = np.empty((bits, count, SEED_BYTES), np.uint8)
    t_cw = np.empty((2, bits, count), np.uint8)
    for level in range(bits):
        expanded = [expand(s[0], 0), expand(s[1], 0)]      # per party: sL _ tL sR _ tR
        a = ((alpha >> np.uint64(bits - 1 - level)) & np.uint64(1)).astype(np.uint8)
        keep_right = a.astype(bool)
        s_lose = [branch(keep_right, e[3], e[0]) for e in expanded]
        s_keep = [branch(keep_right, e[0], e[3]) for e in expanded]
        s_cw[level] = s_lose[0] ^ s_lose[1]
        t_cw[0, level] = expanded[0][2] ^ expanded[1][2] ^ a ^ 1
        t_cw[1, level] = expanded[0][5] ^ expanded[1][5] ^ a
        t_keep_cw = np.where(keep_right, t_cw[1, level], t_cw[0, level])
        for b in (0, 1):
            t_keep = np.where(keep_right, expanded[b][5], expanded[b][2])
            s[b] = s_keep[b] ^ (s_cw[level] * t[b][:, None])
            t[b] = t_keep ^ (t[b] & t_keep_cw)
    difference = beta - to_ring(s[0], 1)[:, 0] + to_ring(s[1], 1)[:, 0]
    final = np.where(t[1].astype(bool), np.uint64(0) - difference, difference)
    return tuple(DPFKey(b, bits, roots[b], s_cw, t_cw[0], t_cw[1], final) for b in (0, 1))


def _expand_slice(key: DPFKey, rows: slice) -> np.ndarray:
    """This party's shares (E', 2^bits) uint64 for the elements ``rows`` of the key."""
    s = key.seed[rows][:, None, :]                            # (E', nodes, 16)
    t = np.full(s.shape[:2], key.party, np.uint8)
    for level in range(key.bits):
        count, nodes = s.shape[:2]
        s_left, _, t_left, s_right, _, t_right = expand(s.reshape(-1, SEED_BYTES), 0)
        flag = t[..., None]
        correction = key.s_cw[level, rows][:, None, :] * flag
        s_left = s_left.reshape(count, nodes, SEED_BYTES) ^ correction
        s_right = s_right.reshape(count, nodes, SEED_BYTES) ^ correction
        t_left = t_left.reshape(count, nodes) ^ (t & key.t_cw_left[level, rows][:, None])
        t_right = t_right.reshape(count, nodes) ^ (t & key.t_cw_right[level, rows][:, None])
        s = np.stack([s_left, s_right], axis=2).reshape(count, 2 * nodes, SEED_BYTES)
        t = np.stack([t_left, t_right], axis=2).reshape(count, 2 * nodes)
    count, nodes = t.shape
    value = to_ring(s.reshape(-1, SEED_BYTES), 1).reshape(count, nodes)
    value = value + t.astype(np.uint64) * key.final[rows][:, None]
    return np.uint64(0) - value if key.party == 1 else value


def evaluate_all(key: DPFKey) -> np.ndarray:
    """This party's additive shares (mod 2^64) of f(x) for every x < 2^bits: (E, 2^bits),
    x in increasing order along the last axis. Elements are expanded a slice at a time,
    so no level holds more than ~``_LEAVES_PER_SLICE`` seeds."""
    out = np.empty((key.elements, 1 << key.bits), np.uint64)
    step = max(1, _LEAVES_PER_SLICE >> key.bits)
    for start in range(0, key.elements, step):
        rows = slice(start, min(start + step, key.elements))
        out[rows] = _expand_slice(key, rows)
    return out


__all__ = ["DPFKey", "MAX_BITS", "evaluate_all", "gen"]
