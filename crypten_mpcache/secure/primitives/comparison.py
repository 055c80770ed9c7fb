"""The masked comparison protocol [x < 0]: a cheaper secure comparison on dealt mask bits.

CrypTen's comparison ``x < 0`` converts the arithmetic shares to binary shares and runs a
64-bit adder on them, one element per 64-bit word: about 432 bytes per element and party
(TFP), 8 rounds, and with the TTP dealer a round trip to the dealer at every AND level.
Every softmax max, top-k, bounding box, SiLU and norm range reduction pays it.

The ``masked`` protocol (the textbook dealer-assisted comparison) pays ~1/10 of that:

1. The dealer deals a random ring element r twice: additively shared, and as binary
   shares of its 64 bits. The parties open c = x + r (uniform: reveals nothing).
2. x = c - r (mod 2^64), so  msb(x) = c_63 XOR r_63 XOR [c mod 2^63 < r mod 2^63]; the
   comparison of the PUBLIC c with the shared bits of r is a tree over the 63 bit
   positions: leaves lt_p = (not c_p) and r_p, eq_p = not (c_p xor r_p) are local; each
   node merges 4 children's (lt, eq) in ONE round from dealt mask products
   (``comparison_tree``): 3 levels for 64 leaves (binary merges took 6).
3. The bit is turned into an arithmetic share with a dealt random bit (a "daBit"):
   open t = b xor rho, then b = t + rho - 2 t rho.

The bits are *bit-sliced*: a 64-bit word holds the same bit position of 64 elements, so
a tree level opens 7 bits per node and element instead of 7 words. Per element and
party: one opened word (c), 21 x 7 opened bits (the tree) and one opened bit (t): ~27
bytes, 5 rounds (4 for x within 2^32 raw units: 32 leaves, a root of 8), and with the
TTP dealer one request per comparison (party 0 receives ~74 bytes per element, ~84
narrow: its shares of r, rho and the mask products; every other share, and party 0's
shares of the independent values, come from the generators it shares with the TTP).

The result is exact (no probabilistic truncation), so it equals CrypTen's comparison bit
for bit. Security: semi-honest, with a dealer that deals correct randomness, as for
CrypTen's own triples.
"""

from __future__ import annotations

from typing import Any

import torch
from crypten.mpc import MPCTensor

from crypten_mpcache.secure.primitives import comparison_tree as tree
from crypten_mpcache.secure.primitives.bitslice import pack_bits_of, unpack_row
from crypten_mpcache.secure.primitives.comparison_dealer import (
    POSITIONS,
    Layout,
    Material,
    deal,
    leaves_for,
)
from crypten_mpcache.secure.primitives.openings import Pending, open_alone
from crypten_mpcache.secure.primitives.party import open_sum, open_xor, party_rank


def _level(lt: torch.Tensor, eq: torch.Tensor, f: int, root: bool, masks: torch.Tensor,
           products: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One tree level on XOR shares in one round: the nodes' variables opened under the
    dealt masks, the merge terms local (``comparison_tree``)."""
    shares, top_lt = tree.node_variables(f, root, lt, eq)
    opened = open_xor((shares ^ masks).reshape(-1, shares.shape[-1])).view(shares.shape)
    return tree.evaluate(f, root, top_lt, opened, masks, products, first)


def _opened_sign(flat: torch.Tensor, mat: Material, bits: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, t): c = x + r opened (the first round) and t = msb xor rho opened (the last),
    for this party's flat share of x (the tree's rounds between)."""
    c = open_sum(flat + mat.r)                                   # round 1
    return c, _sign_after(c, mat, bits)


def _sign_after(c: torch.Tensor, mat: Material, bits: int) -> torch.Tensor:
    """t = msb xor rho opened, from the opened c: the tree's rounds and the last one."""
    first, n = party_rank() == 0, c.numel()
    c_bits = pack_bits_of(c)                                      # (64, W) public
    ones = torch.full_like(c_bits[:1], -1)
    pads = leaves_for(bits) - bits                                # neutral: lt 0, eq 1
    pad_lt = torch.zeros_like(ones).expand(pads, -1)
    pad_eq = (ones if first else torch.zeros_like(ones)).expand(pads, -1)
    lt = torch.cat([pad_lt, mat.r_bits[:bits] & ~c_bits[:bits]])
    eq = mat.r_bits[:bits] ^ ((c_bits[:bits] ^ ones) if first else 0)
    eq = torch.cat([pad_eq, eq])
    for (f, _, root), (masks, products) in zip(Layout(n, bits).levels, mat.levels,
                                               strict=True):
        lt, eq = _level(lt, eq, f, root, masks, products, first)  # one round per level
    msb = lt ^ mat.r_bits[bits:bits + 1] ^ (c_bits[bits:bits + 1] if first else 0)
    return unpack_row(open_xor(msb ^ mat.rho_bits)[0], n)       # the last round


def _bit_from(t: torch.Tensor, mat: Material) -> torch.Tensor:
    """Arithmetic shares of the bit b = t xor rho: t + rho - 2 t rho (t public)."""
    return (1 - 2 * t) * mat.rho + (t if party_rank() == 0 else 0)


def less_than_zero_shares(share: torch.Tensor, material: Material | None = None,
                          bits: int = POSITIONS) -> torch.Tensor:
    """This party's arithmetic share (scale 1) of [x < 0] for its share of x (any shape).

    ``bits`` < 63: x must lie in [-2^bits, 2^bits) (raw units); then x = (c - r) mod
    2^(bits + 1) and its sign is c_b xor r_b xor [c mod 2^b < r mod 2^b] for b = bits: the
    tree compares b positions (32 leaves for b <= 32: 2 levels, 4 then 8, where 64
    leaves take 3; 1 level for b <= 8). Outside that range the sign is wrong (the bound
    is each caller's documented range)."""
    flat = share.reshape(-1)
    mat = material if material is not None else deal(flat.numel(), flat.device, bits)
    _, t = _opened_sign(flat, mat, bits)
    return _bit_from(t, mat).reshape(share.shape)


def negative_part_shares(share: torch.Tensor, bits: int = POSITIONS
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of (z, z x), z = [x < 0], in the comparison's own rounds: no product after it.

    z = t + rho - 2 t rho with t public, so z x = t x + (1 - 2 t) rho x, and rho x =
    rho c - rho r: rho c is local (c public) and rho r is dealt (one ring word per element,
    ``Layout.width`` 2). Exact in the ring, like the DCF's ``negative_part``; min(x, 0) = z x
    is a tournament level's or a ReLU's select without its multiplication round."""
    return open_alone(_negative_part_prepared(share, bits))


def _negative_part_prepared(share: torch.Tensor, bits: int
                            ) -> Pending[tuple[torch.Tensor, torch.Tensor]]:
    """``negative_part_shares`` with its first opening (c) left to ``openings``; the
    tree's rounds and the daBit's follow it."""
    flat = share.reshape(-1)
    mat = deal(flat.numel(), flat.device, bits, width=2)

    def finish(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = _sign_after(c, mat, bits)
        z = _bit_from(t, mat)
        rho_x = mat.rho * c - mat.rho_r
        product = t * flat + (1 - 2 * t) * rho_x
        return z.reshape(share.shape), product.reshape(share.shape)

    return Pending(flat + mat.r, finish)


def bit_tensor(shares: torch.Tensor) -> Any:
    """This party's shares of a 0/1 value as an MPCTensor with encoder scale 1, the form
    CrypTen's ``_ltz`` returns (every comparison protocol here ends in it)."""
    result = MPCTensor.from_shares(shares, precision=0)
    result.encoder._scale = 1
    return result


def less_than_zero(x: Any, bits: int = POSITIONS) -> Any:
    """[x < 0] as an MPCTensor with encoder scale 1, like CrypTen's ``_ltz``; ``bits`` < 63
    for x known to lie in [-2^bits, 2^bits) (see ``less_than_zero_shares``)."""
    return bit_tensor(less_than_zero_shares(x._tensor.share, bits=bits))


def less_than_zero_pending(x: Any, bits: int = POSITIONS) -> Pending[Any]:
    """``less_than_zero`` with its first opening left to ``openings.open_together``."""
    share = x._tensor.share
    flat = share.reshape(-1)
    mat = deal(flat.numel(), flat.device, bits)

    def finish(c: torch.Tensor) -> Any:
        return bit_tensor(_bit_from(_sign_after(c, mat, bits), mat).reshape(share.shape))

    return Pending(flat + mat.r, finish)


def negative_part(x: Any, bits: int = POSITIONS) -> tuple[Any, Any]:
    """([x < 0] with encoder scale 1, min(x, 0) with x's encoder), in the comparison's
    rounds (see ``negative_part_shares``)."""
    return open_alone(negative_part_pending(x, bits))


def negative_part_pending(x: Any, bits: int = POSITIONS) -> Pending[tuple[Any, Any]]:
    """``negative_part`` with its first opening left to ``openings.open_together``."""
    return bit_and_product(x, _negative_part_prepared(x._tensor.share, bits))


def bit_and_product(x: Any, shares: Pending[tuple[torch.Tensor, torch.Tensor]]
                 ) -> Pending[tuple[Any, Any]]:
    """A pending (z, z x) of shares as (scale-1 bits, an MPCTensor with x's encoder)."""
    def finish(c: torch.Tensor) -> tuple[Any, Any]:
        z, product = shares.finish(c)
        out = x.clone()
        out._tensor.share = product
        return bit_tensor(z), out

    return Pending(shares.masked, finish)
