"""The dealer side of the masked comparison: the material's layout, drawing and dealing.

The dealer deals a random ring element r twice (additively shared, and as binary shares
of its 64 bits), a daBit rho (and, for a compare-and-select, rho r as a ring element),
and for the comparison tree the masks of each level's opened bits and their products
(``comparison_tree``; see
``primitives.comparison`` for the protocol, ``docs/comparison.md`` for the costs). With
the TTP, every party draws its ``free`` rows and its share of the ``dependent`` values
from the generator it shares with the TTP; the TTP replays those draws and deals party
0's dependent share (``ttp_party0_share``, called by ``patches.crypten_dealer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

from crypten_mpcache.secure.primitives import comparison_tree as tree
from crypten_mpcache.secure.primitives.bitslice import WORD, unpack_row, value_of_packed, words_for
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    party_rank,
    uniform_words,
)

POSITIONS = WORD - 1                    # bits compared below the sign bit, unbounded x


def leaves_for(bits: int) -> int:
    """Leaves of the comparison tree over ``bits`` positions: the power of two at or above
    (the pad leaves below the lowest position are neutral: lt 0, eq 1)."""
    if not 1 <= bits <= POSITIONS:
        raise ValueError(f"the masked comparison compares 1 to {POSITIONS} bits, got {bits}")
    return 1 << (bits - 1).bit_length()


@dataclass(frozen=True)
class Layout:
    """Where each part of the dealt material sits, for n elements compared over ``bits``
    positions (63 for any x; b for x known to lie in [-2^b, 2^b), in raw units).

    ``free`` rows (uniform words, drawn by every party from its dealer generator): the 64
    bit rows of r, one row of rho, then per tree level the masks of the opened variables
    (variables x nodes rows, ``comparison_tree``). ``dependent`` (values fixed by the free
    ones, party 0's share dealt): r and rho (and rho r with ``width`` 2) as n ring
    elements each, then per level the masks' products (monomials x nodes rows).
    """

    n: int
    bits: int = POSITIONS
    width: int = 1

    def __post_init__(self) -> None:
        leaves_for(self.bits)                           # validates
        if self.width not in (1, 2):
            raise ValueError(f"width must be 1 (the bit) or 2 (and rho r), got {self.width}")

    @property
    def levels(self) -> tuple[tuple[int, int, bool], ...]:
        """(fan-in, nodes, root) of each tree level, bottom first: one round each."""
        leaves = leaves_for(self.bits)
        shape = list(zip(tree.fan_ins(leaves), tree.nodes_per_level(leaves), strict=True))
        return tuple((f, m, i == len(shape) - 1) for i, (f, m) in enumerate(shape))

    @property
    def ring(self) -> int:
        """Ring elements at the head of the dependent material: r, rho (, rho r)."""
        return (1 + self.width) * self.n

    @property
    def words(self) -> int:
        return words_for(self.n)

    @property
    def free_rows(self) -> int:
        return WORD + 1 + sum(len(tree.variables(f, root)) * m for f, m, root in self.levels)

    @property
    def product_rows(self) -> int:
        return sum(len(tree.monomials(f, root)) * m for f, m, root in self.levels)

    @property
    def dependent_size(self) -> int:
        return self.ring + self.product_rows * self.words


@dataclass
class Material:
    """One party's shares of the material for one comparison of n elements."""

    r_bits: torch.Tensor        # (64, W) binary
    rho_bits: torch.Tensor      # (1, W) binary
    r: torch.Tensor             # (n,) arithmetic
    rho: torch.Tensor           # (n,) arithmetic (0/1 values)
    # per level: the variables' masks (variables, nodes, W), their products (monomials,
    # nodes, W), binary
    levels: list[tuple[torch.Tensor, torch.Tensor]]
    rho_r: torch.Tensor | None = None        # (n,) arithmetic: rho r (width 2 only)


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    """(free_rows, W) uniform words; the TTP replays the same call on the same generator."""
    return uniform_words((layout.free_rows, layout.words), generator)


def draw_dependent(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.dependent_size,), generator)


def dependent_values(layout: Layout, free: torch.Tensor) -> torch.Tensor:
    """The plaintext dependent material for the plaintext free rows (the dealer's job)."""
    n = layout.n
    r = value_of_packed(free[:WORD], n)
    rho = unpack_row(free[WORD], n)
    values = [r, rho] if layout.width == 1 else [r, rho, rho * r]
    for (f, _, root), masks in zip(layout.levels, _level_masks(layout, free), strict=True):
        values.append(tree.products(f, root, masks).reshape(-1))
    return torch.cat(values)


def _level_masks(layout: Layout, free: torch.Tensor) -> list[torch.Tensor]:
    """Each level's masks (variables, nodes, W) in the free rows."""
    out, row = [], WORD + 1
    for f, m, root in layout.levels:
        count = len(tree.variables(f, root)) * m
        out.append(free[row:row + count].reshape(count // m, m, -1))
        row += count
    return out


def split_dependent(layout: Layout, value: torch.Tensor, others: Sequence[torch.Tensor]
                    ) -> torch.Tensor:
    """Party 0's share of the dependent material, given every other party's share: the
    ring parts are additive, the product rows are XOR shares."""
    share = value.clone()
    for other in others:
        share[: layout.ring] -= other[: layout.ring]
        share[layout.ring:] ^= other[layout.ring:]
    return share


def assemble(layout: Layout, free: torch.Tensor, dependent: torch.Tensor) -> Material:
    """This party's free rows and dependent shares as ``Material``."""
    n, words = layout.n, layout.words
    products = dependent[layout.ring:].view(-1, words)
    levels, row = [], 0
    for (f, m, root), masks in zip(layout.levels, _level_masks(layout, free), strict=True):
        count = len(tree.monomials(f, root))
        levels.append((masks, products[row:row + count * m].reshape(count, m, words)))
        row += count * m
    return Material(r_bits=free[:WORD], rho_bits=free[WORD:WORD + 1], r=dependent[:n],
                    rho=dependent[n:2 * n], levels=levels,
                    rho_r=dependent[2 * n:3 * n] if layout.width == 2 else None)


# --------------------------------------------------------------------------- dealers


def deal(n: int, device: torch.device, bits: int = POSITIONS, width: int = 1) -> Material:
    """This party's material for n elements over ``bits`` positions (with rho r where
    ``width`` is 2), from the configured dealer."""
    layout = Layout(n, bits, width)
    free, dependent = by_dealer(
        "the masked comparison",
        ttp=lambda: deal_via_ttp("comparison_material", (layout.n, layout.bits, layout.width),
                                 lambda g: draw_free(layout, g),
                                 lambda g: draw_dependent(layout, g)),
        tfp=lambda: _deal_tfp(layout))
    return assemble(layout, free.to(device), dependent.to(device))


def ttp_party0_share(generators: Sequence[torch.Generator], n: int, bits: int = POSITIONS,
                     width: int = 1) -> torch.Tensor:
    """The TTP's side: replay every party's draws, deal party 0's dependent share."""
    layout = Layout(n, bits, width)
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
    free = value = None
    if party_rank() == 0:
        free = draw_free(layout, None)
        value = dependent_values(layout, free)
    free_share = BinarySharedTensor(free, size=(layout.free_rows, layout.words), src=0).share
    ring = ArithmeticSharedTensor(None if value is None else value[: layout.ring],
                                  size=(layout.ring,), precision=0, src=0).share
    products = BinarySharedTensor(None if value is None else value[layout.ring:],
                                  size=(layout.dependent_size - layout.ring,), src=0).share
    return free_share, torch.cat([ring, products])

