"""Bit slicing: 0/1 values packed 64 to a ring word, the layout of the masked comparison.

A 64-bit word holds the same bit position of 64 elements, so an AND on XOR shares opens
2 bits per element instead of 2 words (``primitives.comparison``). Plain torch, no shares.
"""

from __future__ import annotations

import torch

WORD = 64
_SHIFTS = torch.arange(WORD, dtype=torch.long)



def words_for(n: int) -> int:
    """64-bit words per bit-sliced row of n elements."""
    return (n + WORD - 1) // WORD


def _pack_row(bits: torch.Tensor, words: int) -> torch.Tensor:
    padded = torch.zeros(words * WORD, dtype=torch.long, device=bits.device)
    padded[: bits.numel()] = bits
    return (padded.view(words, WORD) << _SHIFTS.to(bits.device)).sum(-1)


def unpack_row(words: torch.Tensor, n: int) -> torch.Tensor:
    return ((words.unsqueeze(-1) >> _SHIFTS.to(words.device)) & 1).reshape(-1)[:n]


def pack(bits: torch.Tensor) -> torch.Tensor:
    """(rows, n) tensor of 0/1 -> (rows, words_for(n)) words; element j is bit j % 64 of
    word j // 64 (padding lanes are 0). The sum of distinct powers of two is their OR."""
    words = words_for(bits.shape[1])
    return torch.stack([_pack_row(row, words) for row in bits])


def unpack(words: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``pack``: (rows, W) words -> (rows, n) tensor of 0/1."""
    return torch.stack([unpack_row(row, n) for row in words])


def pack_bits_of(values: torch.Tensor) -> torch.Tensor:
    """(n,) int64 -> (64, W): row p packs bit p of every element. One row at a time, so
    the memory stays ~2 x 8n bytes (a box over millions of keys is compared at once)."""
    words = words_for(values.numel())
    return torch.stack([_pack_row((values >> p) & 1, words) for p in range(WORD)])


def value_of_packed(rows: torch.Tensor, n: int) -> torch.Tensor:
    """(64, W) packed bit rows -> (n,) int64 (the inverse of ``pack_bits_of``)."""
    out = torch.zeros(n, dtype=torch.long, device=rows.device)
    for p in range(WORD):
        out |= unpack_row(rows[p], n) << p
    return out

