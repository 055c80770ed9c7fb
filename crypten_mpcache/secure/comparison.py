"""A cheaper secure comparison: the dealer deals the bits of the mask.

CrypTen's comparison ``x < 0`` converts the arithmetic shares to binary shares and runs a
64-bit adder on them, one element per 64-bit word: about 432 bytes per element and party
(TFP), 8 rounds, and with the TTP dealer a round trip to the dealer at every AND level.
Every softmax max, top-k, bounding box, SiLU and norm range reduction pays it.

The ``masked`` protocol (the textbook dealer-assisted comparison) pays ~1/10 of that:

1. The dealer deals a random ring element r twice: additively shared, and as binary
   shares of its 64 bits. The parties open c = x + r (uniform: reveals nothing).
2. x = c - r (mod 2^64), so  msb(x) = c_63 XOR r_63 XOR [c mod 2^63 < r mod 2^63]; the
   comparison of the PUBLIC c with the shared bits of r is a log-depth tree over the 63
   bit positions: leaves lt_p = (not c_p) and r_p, eq_p = not (c_p xor r_p) are local;
   each merge of a higher and a lower half is lt = lt_hi xor (eq_hi and lt_lo),
   eq = eq_hi and eq_lo: two ANDs that share an operand (3 openings, Beaver triples).
3. The bit is turned into an arithmetic share with a dealt random bit (a "daBit"):
   open t = b xor rho, then b = t + rho - 2 t rho.

The bits are *bit-sliced*: a 64-bit word holds the same bit position of 64 elements, so
an AND opens 2 bits per element instead of 2 words. Per element and party: one opened
word (c), 63 x 3 opened bits (the tree) and one opened bit (t): ~32 bytes, 8 rounds,
and with the TTP dealer one request per comparison (party 0 receives ~32 bytes per
element: its shares of r, rho and the triples' products; every other share, and party
0's shares of the independent values, come from the generators it shares with the TTP).

The result is exact (no probabilistic truncation), so it equals CrypTen's comparison bit
for bit. Security: semi-honest, with a dealer that deals correct randomness, as for
CrypTen's own triples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

from crypten_mpcache.secure.party import (
    by_dealer,
    deal_via_ttp,
    open_sum,
    open_xor,
    party_rank,
    uniform_words,
)

WORD = 64
POSITIONS = WORD - 1                    # bits compared below the sign bit
LEVELS = 6                              # 64 leaves (63 positions + one pad) -> 1
MERGES = tuple(32 >> level for level in range(LEVELS))   # 32, 16, 8, 4, 2, 1
_SHIFTS = torch.arange(WORD, dtype=torch.long)


# --------------------------------------------------------------------------- bit slicing


def words_for(n: int) -> int:
    """64-bit words per bit-sliced row of n elements."""
    return (n + WORD - 1) // WORD


def _pack_row(bits: torch.Tensor, words: int) -> torch.Tensor:
    padded = torch.zeros(words * WORD, dtype=torch.long, device=bits.device)
    padded[: bits.numel()] = bits
    return (padded.view(words, WORD) << _SHIFTS.to(bits.device)).sum(-1)


def _unpack_row(words: torch.Tensor, n: int) -> torch.Tensor:
    return ((words.unsqueeze(-1) >> _SHIFTS.to(words.device)) & 1).reshape(-1)[:n]


def pack(bits: torch.Tensor) -> torch.Tensor:
    """(rows, n) tensor of 0/1 -> (rows, words_for(n)) words; element j is bit j % 64 of
    word j // 64 (padding lanes are 0). The sum of distinct powers of two is their OR."""
    words = words_for(bits.shape[1])
    return torch.stack([_pack_row(row, words) for row in bits])


def unpack(words: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``pack``: (rows, W) words -> (rows, n) tensor of 0/1."""
    return torch.stack([_unpack_row(row, n) for row in words])


def pack_bits_of(values: torch.Tensor) -> torch.Tensor:
    """(n,) int64 -> (64, W): row p packs bit p of every element. One row at a time, so
    the memory stays ~2 x 8n bytes (a box over millions of keys is compared at once)."""
    words = words_for(values.numel())
    return torch.stack([_pack_row((values >> p) & 1, words) for p in range(WORD)])


def value_of_packed(rows: torch.Tensor, n: int) -> torch.Tensor:
    """(64, W) packed bit rows -> (n,) int64 (the inverse of ``pack_bits_of``)."""
    out = torch.zeros(n, dtype=torch.long, device=rows.device)
    for p in range(WORD):
        out |= _unpack_row(rows[p], n) << p
    return out


# --------------------------------------------------------------------------- material


@dataclass(frozen=True)
class Layout:
    """Where each part of the dealt material sits, for n elements.

    ``free`` rows (uniform words, drawn by every party from its dealer generator): the 64
    bit rows of r, one row of rho, then per tree level the triples' a, b1, b2 (3 x merges
    rows). ``dependent`` (values fixed by the free ones, party 0's share dealt): r and rho
    as n ring elements each, then the products c1 = a & b1 and c2 = a & b2 per level.
    """

    n: int

    @property
    def words(self) -> int:
        return words_for(self.n)

    @property
    def free_rows(self) -> int:
        return WORD + 1 + 3 * sum(MERGES)

    @property
    def product_rows(self) -> int:
        return 2 * sum(MERGES)

    @property
    def dependent_size(self) -> int:
        return 2 * self.n + self.product_rows * self.words


@dataclass
class Material:
    """One party's shares of the material for one comparison of n elements."""

    r_bits: torch.Tensor        # (64, W) binary
    rho_bits: torch.Tensor      # (1, W) binary
    r: torch.Tensor             # (n,) arithmetic
    rho: torch.Tensor           # (n,) arithmetic (0/1 values)
    triples: list[tuple[torch.Tensor, ...]]  # per level: a, b1, b2, c1, c2, each (m, W)


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    """(free_rows, W) uniform words; the TTP replays the same call on the same generator."""
    return uniform_words((layout.free_rows, layout.words), generator)


def draw_dependent(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.dependent_size,), generator)


def dependent_values(layout: Layout, free: torch.Tensor) -> torch.Tensor:
    """The plaintext dependent material for the plaintext free rows (the dealer's job)."""
    n = layout.n
    r = value_of_packed(free[:WORD], n)
    rho = _unpack_row(free[WORD], n)
    products = []
    for a, b1, b2 in _free_triples(free):
        products += [a & b1, a & b2]
    return torch.cat([r, rho, torch.cat(products).reshape(-1)])


def _free_triples(free: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out, row = [], WORD + 1
    for m in MERGES:
        out.append((free[row:row + m], free[row + m:row + 2 * m], free[row + 2 * m:row + 3 * m]))
        row += 3 * m
    return out


def split_dependent(layout: Layout, value: torch.Tensor, others: Sequence[torch.Tensor]
                    ) -> torch.Tensor:
    """Party 0's share of the dependent material, given every other party's share: the
    ring parts are additive, the product rows are XOR shares."""
    n = layout.n
    share = value.clone()
    for other in others:
        share[: 2 * n] -= other[: 2 * n]
        share[2 * n:] ^= other[2 * n:]
    return share


def assemble(layout: Layout, free: torch.Tensor, dependent: torch.Tensor) -> Material:
    """This party's free rows and dependent shares as ``Material``."""
    n, words = layout.n, layout.words
    products = dependent[2 * n:].view(-1, words)
    triples, row = [], 0
    for (a, b1, b2), m in zip(_free_triples(free), MERGES, strict=True):
        c1, c2 = products[row:row + m], products[row + m:row + 2 * m]
        triples.append((a, b1, b2, c1, c2))
        row += 2 * m
    return Material(r_bits=free[:WORD], rho_bits=free[WORD:WORD + 1], r=dependent[:n],
                    rho=dependent[n:2 * n], triples=triples)


# --------------------------------------------------------------------------- dealers


def deal(n: int, device: torch.device) -> Material:
    """This party's material for n elements, from the configured dealer."""
    layout = Layout(n)
    free, dependent = by_dealer(
        "the masked comparison",
        ttp=lambda: deal_via_ttp("comparison_material", (layout.n,),
                                 lambda g: draw_free(layout, g),
                                 lambda g: draw_dependent(layout, g)),
        tfp=lambda: _deal_tfp(layout))
    return assemble(layout, free.to(device), dependent.to(device))


def ttp_party0_share(generators: Sequence[torch.Generator], n: int) -> torch.Tensor:
    """The TTP's side: replay every party's draws, deal party 0's dependent share."""
    layout = Layout(n)
    free = torch.zeros(layout.free_rows, layout.words, dtype=torch.long)
    others = []
    for rank, generator in enumerate(generators):
        free ^= draw_free(layout, generator)
        if rank > 0:
            others.append(draw_dependent(layout, generator))
    return split_dependent(layout, dependent_values(layout, free), others)


def _deal_tfp(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0 draws everything and shares it with CrypTen's pseudo-random zero sharing
    (no traffic); party 0 then knows every mask: tests and cost measurement only."""
    n = layout.n
    free = value = None
    if party_rank() == 0:
        free = draw_free(layout, None)
        value = dependent_values(layout, free)
    free_share = BinarySharedTensor(free, size=(layout.free_rows, layout.words), src=0).share
    ring = ArithmeticSharedTensor(None if value is None else value[: 2 * n], size=(2 * n,),
                                  precision=0, src=0).share
    products = BinarySharedTensor(None if value is None else value[2 * n:],
                                  size=(layout.dependent_size - 2 * n,), src=0).share
    return free_share, torch.cat([ring, products])


# --------------------------------------------------------------------------- protocol


def _merge(lt: torch.Tensor, eq: torch.Tensor, triple: tuple[torch.Tensor, ...],
           first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One tree level on XOR shares: rows (2j, 2j+1) = (lower, higher) positions."""
    a, b1, b2, c1, c2 = triple
    lt_lo, lt_hi, eq_lo, eq_hi = lt[0::2], lt[1::2], eq[0::2], eq[1::2]
    m = a.shape[0]
    opened = open_xor(torch.cat([eq_hi ^ a, lt_lo ^ b1, eq_lo ^ b2]))
    d, e1, e2 = opened[:m], opened[m:2 * m], opened[2 * m:]
    and_lt = c1 ^ (d & b1) ^ (e1 & a)
    and_eq = c2 ^ (d & b2) ^ (e2 & a)
    if first:
        and_lt ^= d & e1
        and_eq ^= d & e2
    return lt_hi ^ and_lt, and_eq


def less_than_zero_shares(share: torch.Tensor, material: Material | None = None
                          ) -> torch.Tensor:
    """This party's arithmetic share (scale 1) of [x < 0] for its share of x (any shape)."""
    flat = share.reshape(-1)
    n = flat.numel()
    mat = material if material is not None else deal(n, flat.device)
    first = party_rank() == 0
    c = open_sum(flat + mat.r)                                   # round 1
    c_bits = pack_bits_of(c)                                      # (64, W) public
    ones = torch.full_like(c_bits[:1], -1)
    pad_lt = torch.zeros_like(ones)
    pad_eq = ones if first else torch.zeros_like(ones)
    lt = torch.cat([pad_lt, mat.r_bits[:POSITIONS] & ~c_bits[:POSITIONS]])
    eq = mat.r_bits[:POSITIONS] ^ ((c_bits[:POSITIONS] ^ ones) if first else 0)
    eq = torch.cat([pad_eq, eq])
    for triple in mat.triples:                                    # rounds 2..7
        lt, eq = _merge(lt, eq, triple, first)
    msb = lt ^ mat.r_bits[POSITIONS:] ^ (c_bits[POSITIONS:] if first else 0)
    t = _unpack_row(open_xor(msb ^ mat.rho_bits)[0], n)          # round 8
    bit = (1 - 2 * t) * mat.rho + (t if first else 0)
    return bit.reshape(share.shape)


def less_than_zero(x: Any) -> Any:
    """[x < 0] as an MPCTensor with encoder scale 1, like CrypTen's ``_ltz``."""
    result = MPCTensor.from_shares(less_than_zero_shares(x._tensor.share), precision=0)
    result.encoder._scale = 1
    return result
