"""The dealer side of the DCF comparison: the material's layout, drawing and dealing.

Every party draws its share of the mask r for all n elements, then per batch a root seed
and an offset share, from the generator it shares with the TTP; the TTP replays the draws,
runs ``dcf.gen`` per batch and deals party 0 the correction words and its offset share;
party 1 receives the same correction words (``runtime.offline.relay``). With the TFP,
party 0 deals (tests and cost measurement only). ``dcf_comparison`` has the protocol and
the costs; docs/fss.md the security argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import crypten.communicator as comm
import numpy as np
import torch
from crypten.mpc.primitives import ArithmeticSharedTensor
from crypten.mpc.provider.ttp_provider import TTPClient

from crypten_mpcache.runtime.cost import dealer_request
from crypten_mpcache.runtime.offline import OfflineConfig, relay
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    party_rank,
    uniform_words,
)
from crypten_mpcache.secure.primitives.prg import control_words, key_fields

BITS = 63                # the full width: x anywhere in the ring
LOW = (1 << BITS) - 1


def low_bits(bits: int) -> int:
    """The mask of the ``bits`` low bits that the keys compare (c' and r')."""
    if not 1 <= bits <= BITS:
        raise ValueError(f"a DCF comparison compares 1 to {BITS} low bits, got {bits}")
    return (1 << bits) - 1


@dataclass(frozen=True)
class Layout:
    """Word counts of one dealt batch of n elements with a payload of ``width`` words
    (1: the bit; 2: the bit and the bit times the mask, ``negative_part``) and ``bits``
    tree levels (63 for any x; b for x known to lie in [-2^b, 2^b), in raw units): every
    party's free draw (root seed 2n, offset shares width n) and the correction words (cw:
    s 2n and v width n per level, the 2 n control bits per level packed, the final width
    n)."""

    n: int
    width: int = 1
    bits: int = BITS

    @property
    def free_words(self) -> int:
        return (2 + self.width) * self.n

    @property
    def t_words(self) -> int:
        return control_words(self.bits, self.n)

    @property
    def cw_words(self) -> int:
        return (2 + self.width) * (self.bits * self.n) + self.t_words + self.width * self.n

    @property
    def party0_words(self) -> int:
        return self.cw_words + self.width * self.n


def checked_batch(config: OfflineConfig) -> int:
    """``config.dcf_batch``, once one batch's material (party 0's, the larger) is known to
    fit in one dealt chunk, so no dealt request exceeds ``chunk_bytes``."""
    nbytes = 8 * Layout(config.dcf_batch, max(dcf.WIDTHS)).party0_words
    if nbytes > config.chunk_bytes:
        raise ValueError(f"dcf_batch {config.dcf_batch} needs {nbytes} bytes of material per "
                         f"request, more than chunk_bytes {config.chunk_bytes}: lower "
                         "dcf_batch or raise chunk_bytes")
    return config.dcf_batch


def batches(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, count) of the dealt batches of a comparison of n elements."""
    return [(start, min(batch, n - start)) for start in range(0, n, batch)]


def draw_mask(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((n,), generator)


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.free_words,), generator)


def _split_free(layout: Layout, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return free[:2 * layout.n], free[2 * layout.n:]          # root seed (n, 2), o_i (w n)


def pack_cw(key: dcf.DCFKey) -> torch.Tensor:
    """A key's correction words (identical in both keys) as int64 words."""
    return torch.from_numpy(key.correction_words())


def unpack_key(layout: Layout, party: int, seed: torch.Tensor, cw: torch.Tensor) -> dcf.DCFKey:
    n, width = layout.n, layout.width
    return dcf.DCFKey(party=party, bits=layout.bits, **key_fields(
        seed.contiguous().numpy(), cw.contiguous().numpy(), layout.bits, n, width, (n, width)))


def keys_for(r: torch.Tensor, roots: tuple[torch.Tensor, torch.Tensor], width: int = 1,
             bits: int = BITS) -> tuple[dcf.DCFKey, torch.Tensor]:
    """The dealer's work for r (n,): party 0's key (its correction words serve both) and
    the offsets whose shares the parties hold: b = bit ``bits`` of r (width 1), and b r
    (width 2, the key's payload then (beta, beta r), so the parties get shares of w and of
    w r; r is the whole ring element, so w r is exact however few bits are compared)."""
    r_np = r.numpy().view(np.uint64)
    b = ((r_np >> np.uint64(bits)) & np.uint64(1)).astype(np.uint64)
    beta = np.uint64(1) - np.uint64(2) * b                          # 1 - 2b mod 2^64
    offsets = [b]
    if width == 2:
        beta = np.stack([beta, beta * r_np], axis=1)
        offsets.append(b * r_np)
    seeds = tuple(s.contiguous().numpy().view(np.uint8) for s in roots)
    key0, _ = dcf.gen(r_np & np.uint64(low_bits(bits)), beta, bits, roots=seeds)
    return key0, torch.from_numpy(np.concatenate(offsets).view(np.int64))


@dataclass
class PendingMask:
    """The dealer's r of the comparison it is dealing (the parties drew their shares of it
    before they opened c), kept from its first batch to its last."""

    r: torch.Tensor
    dealt: int = 0


def ttp_party0_share(state: dict, generators: list[torch.Generator], n: int, start: int,
                     count: int, width: int = 1, bits: int = BITS) -> torch.Tensor:
    """The TTP's side of batch [start, start + count) of a comparison of n elements:
    replay every party's draws; party 0's correction words and offset. ``state`` is the
    dealer's (it keeps the pending mask between batches)."""
    if start == 0:
        state["dcf_mask"] = PendingMask(sum(draw_mask(n, g) for g in generators))
    pending = state.get("dcf_mask")
    if pending is None or pending.r.numel() != n or pending.dealt != start \
            or not 0 < count <= n - start:
        raise ValueError(f"dcf_material({n}, {start}, {count}, {width}, {bits}) does not continue "
                         "the comparison the dealer is dealing")
    if width not in dcf.WIDTHS:
        raise ValueError(f"dcf_material: width must be in {dcf.WIDTHS}, got {width}")
    low_bits(bits)                                                  # validates
    layout = Layout(count, width, bits)
    draws = [_split_free(layout, draw_free(layout, g)) for g in generators]
    key0, b = keys_for(pending.r[start:start + count], (draws[0][0], draws[1][0]), width,
                       bits)
    offset0 = b - sum((d[1] for d in draws[1:]), torch.zeros_like(b))
    pending.dealt += count
    if pending.dealt == n:
        del state["dcf_mask"]
    return torch.cat([pack_cw(key0), offset0])


@dataclass
class Material:
    offset: torch.Tensor             # (count,) this party's share of b for one batch
    key: dcf.DCFKey | None           # parties 0 and 1


class Dealing:
    """This party's side of the dealt material of one comparison of n elements with a
    payload of ``width`` words over ``bits`` levels: first its share of the mask r for all
    n (``mask_share``, before the opening), then the keys batch by batch (``keys``)."""

    def __init__(self, n: int, width: int = 1, bits: int = BITS) -> None:
        self.n, self.width, self.bits, self.rank = n, width, bits, party_rank()
        self._plain_r: torch.Tensor | None = None       # TFP: party 0 knows r

    def mask_share(self) -> torch.Tensor:
        return by_dealer("the DCF comparison", ttp=self._mask_ttp, tfp=self._mask_tfp)

    def _mask_ttp(self) -> torch.Tensor:
        return draw_mask(self.n, TTPClient.get().get_generator())

    def _mask_tfp(self) -> torch.Tensor:
        if self.rank == 0:
            self._plain_r = draw_mask(self.n, None)
        return ArithmeticSharedTensor(self._plain_r, size=(self.n,), precision=0, src=0).share

    def keys(self, start: int, count: int) -> Material:
        layout = Layout(count, self.width, self.bits)
        return by_dealer("the DCF comparison", ttp=lambda: self._keys_ttp(layout, start),
                         tfp=lambda: self._keys_tfp(layout, start))

    def _keys_ttp(self, layout: Layout, start: int) -> Material:
        free, dealt = deal_via_ttp("dcf_material",
                                   (self.n, start, layout.n, layout.width, layout.bits),
                                   lambda g: draw_free(layout, g),
                                   lambda g: torch.empty(0, dtype=torch.long))
        seed, offset = _split_free(layout, free)
        if self.rank == 0:
            return Material(dealt[layout.cw_words:],
                            unpack_key(layout, 0, seed, dealt[:layout.cw_words]))
        if self.rank == 1:
            return Material(offset, unpack_key(layout, 1, seed, relay(layout.cw_words)))
        return Material(offset, None)

    def _keys_tfp(self, layout: Layout, start: int) -> Material:
        """Party 0 deals (it learns every mask): tests and cost measurement only. The
        offsets' shares go by CrypTen's zero sharing; party 1's key (root seed and
        correction words) is sent to it, charged to the dealer counters."""
        n, rank = layout.n, self.rank
        offsets = key_words = seeds = None
        if rank == 0:
            seeds = (uniform_words((2 * n,), None), uniform_words((2 * n,), None))
            key0, offsets = keys_for(self._plain_r[start:start + n], seeds, layout.width,
                                     layout.bits)
            key_words = torch.cat([seeds[1], pack_cw(key0)])
        shares = ArithmeticSharedTensor(offsets, size=(layout.width * n,), precision=0,
                                        src=0).share
        key = None
        if rank in (0, 1):
            with dealer_request():
                if rank == 0:
                    comm.get().send(key_words, 1)
                else:
                    key_words = comm.get().recv(torch.empty(2 * n + layout.cw_words,
                                                            dtype=torch.long), 0)
            seed = seeds[0] if rank == 0 else key_words[: 2 * n]
            key = unpack_key(layout, rank, seed, key_words[2 * n:])
        return Material(shares, key)
