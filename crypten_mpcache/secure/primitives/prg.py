"""The pseudorandom generator of the function-secret-sharing trees (DCF and DPF keys).

Fixed-key AES-128 in Matyas-Meyer-Oseas mode, G(s) = AES_K(s xor j) xor s xor j for the
block tweaks j, through ``cryptography`` (OpenSSL, AES-NI): one call per tree level for
all seeds of the level. A seed expands to two child seeds, ``width`` pairs of ring words
(the DCF's value words; none for a DPF) and a block whose low bits are the two children's
control bits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 16
# A public, fixed AES key (fixed-key AES as a random permutation, the standard PRG choice).
_FIXED_KEY = hashlib.sha256(b"crypten_mpcache dcf prg v1").digest()[:16]


def _tweaks(width: int) -> np.ndarray:
    """Block j of G(s) encrypts s xor j: 2 seed blocks, ``width`` value blocks (a left and
    a right word each), 1 block of control bits (last, so every width keeps its layout)."""
    tweaks = np.zeros((3 + width, SEED_BYTES), dtype=np.uint8)
    tweaks[:, -1] = np.arange(3 + width, dtype=np.uint8)
    return tweaks


def expand(seeds: np.ndarray, width: int = 1) -> tuple[np.ndarray, ...]:
    """G(s) for (E, 16) seeds -> (s_left, v_left, t_left, s_right, v_right, t_right), the
    values (E, width) ring words (width 0: empty)."""
    blocks = seeds[:, None, :] ^ _tweaks(width)[None]         # (E, 3 + width, 16)
    encryptor = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    out = np.frombuffer(encryptor.update(blocks.tobytes()), dtype=np.uint8)
    out = out.reshape(blocks.shape) ^ blocks
    values = out[:, 2:2 + width].copy().view(np.uint64)       # (E, width, 2)
    s_left, s_right = out[:, 0].copy(), out[:, 1].copy()
    control = out[:, 2 + width]
    t_left, t_right = control[:, 0] & 1, control[:, 1] & 1
    return s_left, values[:, :, 0], t_left, s_right, values[:, :, 1], t_right


def to_ring(seed: np.ndarray, width: int) -> np.ndarray:
    """A seed's first 8 x width bytes as ring elements (E, width) (the group Z_2^64)."""
    return seed[:, :8 * width].copy().view(np.uint64)


def random_seeds(count: int) -> np.ndarray:
    """``count`` fresh 128-bit seeds from the operating system's CSPRNG."""
    return np.frombuffer(os.urandom(count * SEED_BYTES), dtype=np.uint8).reshape(
        count, SEED_BYTES).copy()


@dataclass(frozen=True)
class TreeKey:
    """What every tree key (DCF, DPF) holds for E elements of ``bits`` levels: seed (E, 16)
    the root seed; s_cw (n, E, 16), t_cw_left / t_cw_right (n, E) the per-level correction
    words (the same in both parties' keys); final the output correction word(s)."""

    party: int
    bits: int
    seed: np.ndarray
    s_cw: np.ndarray
    t_cw_left: np.ndarray
    t_cw_right: np.ndarray
    final: np.ndarray

    @property
    def elements(self) -> int:
        return int(self.seed.shape[0])

    def value_words(self) -> tuple[np.ndarray, ...]:
        """Per-level value correction words, if the kind of key has them (DCF)."""
        return ()

    def correction_words(self) -> np.ndarray:
        """What the dealer sends of this key (the same for both parties) as int64 words:
        seed corrections, value corrections, control bits (8 to a byte), output ones."""
        t = np.packbits(np.concatenate([self.t_cw_left.reshape(-1),
                                        self.t_cw_right.reshape(-1)]))
        parts = [self.s_cw.reshape(-1).view(np.int64),
                 *(v.reshape(-1).view(np.int64) for v in self.value_words()),
                 np.pad(t, (0, (-len(t)) % 8)).view(np.int64),
                 self.final.reshape(-1).view(np.int64)]
        return np.concatenate(parts)


def key_fields(seed: np.ndarray, words: np.ndarray, levels: int, count: int,
               value_width: int, final_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The arrays of a key from its root seed words and ``correction_words`` (the inverse
    layout): seed, s_cw, v_cw (when ``value_width``), t_cw_left, t_cw_right, final."""
    s_end = 2 * levels * count
    v_end = s_end + value_width * levels * count
    t_end = v_end + control_words(levels, count)
    t = np.unpackbits(words[v_end:t_end].view(np.uint8))[: 2 * levels * count]
    fields = {"seed": seed.view(np.uint8).reshape(count, SEED_BYTES),
              "s_cw": words[:s_end].view(np.uint8).reshape(levels, count, SEED_BYTES),
              "t_cw_left": t[: levels * count].reshape(levels, count),
              "t_cw_right": t[levels * count:].reshape(levels, count),
              "final": words[t_end:t_end + int(np.prod(final_shape))].view(np.uint64)
              .reshape(final_shape)}
    if value_width:
        fields["v_cw"] = words[s_end:v_end].view(np.uint64).reshape(levels, count,
                                                                    value_width)
    return fields


def branch(right: np.ndarray, left_value: np.ndarray, right_value: np.ndarray) -> np.ndarray:
    """Per element (the first axis): ``right_value`` where ``right`` else ``left_value``."""
    mask = right.reshape(-1, *([1] * (left_value.ndim - 1)))
    return np.where(mask, right_value, left_value)


def control_words(levels: int, count: int) -> int:
    """int64 words of the packed control bits for ``levels`` x ``count`` elements."""
    return (2 * levels * count + 63) // 64


def xor_where(seed: np.ndarray, flag: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """seed xor correction in the rows (first axis) where ``flag`` is 1."""
    return seed ^ (correction * flag.reshape(*flag.shape, 1).astype(np.uint8))


__all__ = ["SEED_BYTES", "TreeKey", "branch", "control_words", "expand", "key_fields",
           "random_seeds", "to_ring", "xor_where"]
